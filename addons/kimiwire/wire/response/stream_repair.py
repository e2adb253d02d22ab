"""The stream repairer: upstream SSE bytes in, repaired SSE bytes out (sans-IO).

Text (content, reasoning) goes out in the same event it arrived in; only text that may be the
start of Kimi markup is held back. Tool-call fragments are held and each call goes out once
complete, contiguously, as OpenAI streams it (a first delta with index, id, type, name and
`arguments: ""`, then one with the complete arguments), in the model's index order: when the
next call starts and its JSON is closed, at `finish_reason`, or at the end of the stream. A
client that keeps "one current block" (pi-ai) and one that adds up every delta's arguments
(OpenAI's guide) both rebuild exactly the calls the model made.

First, do no harm: a call whose arguments were cut off (`length`, the body ended, a reset or a
timeout) goes out exactly as the upstream sent it and the finish_reason never claims it is a
call to run; a call whose repair raises goes out as sent; an event that cannot be decoded while
anything is held turns the stream into passthrough from a point where that is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kimiwire.wire.codecs.sse import DONE, DONE_EVENT, SSEDecoder, SSEEvent, encode_data
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.response.answer_in_reasoning import reasoning_is_answer
from kimiwire.wire.response.choice_repair import ChoiceRepairer
from kimiwire.wire.response.fast_fragments import FragmentPath, fragment_call_index
from kimiwire.wire.response.fast_path import FastPath
from kimiwire.wire.response.handover import Handover
from kimiwire.wire.response.repeated_text import repeats_across_think
from kimiwire.wire.response.tool_call_assembly import Ending
from kimiwire.wire.servers.policy import Policy

__all__ = ["StreamRepairer", "TurnSummary", "repeats_across_think"]

_CHUNK_KEYS = ("id", "object", "created", "model", "system_fingerprint")


@dataclass(frozen=True, slots=True)
class TurnSummary:
    """What the client has been sent so far, over all choices (read-only; e.g. to detect an
    empty turn). `finish_reason` is the first choice's, as delivered."""

    content: bool  # non-empty content
    reasoning: bool  # non-empty reasoning under any of its names
    tool_calls: int  # calls delivered, truncated ones included
    finish_reason: str | None
    truncated: bool  # a call went out with its arguments cut off
    done: bool  # `data: [DONE]` went out


class StreamRepairer:
    """The event loop over the choices: decodes events, keeps what the choices share (the chunk
    template, the turn's text flags, the log), hands each choice to its ChoiceRepairer
    (choice_repair.py) and lets plain reads take the fast path (fast_path.FastPath)."""

    def __init__(self, facts: RequestFacts, policy: Policy) -> None:
        self.facts = facts
        self.policy = policy
        self.declared = facts.known_tool_names
        self.scan_markup = policy.markup == "recover"
        self.split_think = policy.think_tags == "split"
        # Thinking is off: reasoning deltas are the answer an engine misparsed (answer_in_reasoning.py).
        self.reasoning_to_content = self.split_think and reasoning_is_answer(facts, policy)
        self.reasoning_key: str | None = None  # the reasoning field the upstream uses
        self.log = RepairLog()
        self.done = False  # `data: [DONE]` has been emitted
        self.bypass = False  # past the buffer limit: forward the rest unrepaired
        self.failure: Exception | None = None  # a repair raised: what was held went out, the rest passes
        self.events_in = 0
        self.data_events_in = 0  # events that carry data: comments and keepalives do not count
        self.decoder = SSEDecoder()
        self.choices: dict[int, ChoiceRepairer] = {}
        self.template: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._have_template = False
        self.finished_choices = 0
        self._once: set[str] = set()
        self._upstream_error = False  # an error object came in the stream
        self.content_seen = False
        self.reasoning_seen = False
        self.text_unseen = True  # content or reasoning not yet seen: checked on the fast path
        # The fast path (wire/response/fast_path.py): plain text deltas skip parsing when they
        # match an event the full path forwarded unchanged and choice 0's repairer lets them pass.
        self.fast_path = True  # (tests switch it off to compare with the full path)
        self.fast = FastPath(self)
        self.plain_read = self.fast.plain_read
        self.steady_lane = self.fast.steady_lane
        # Argument fragments of held calls (fast_fragments.py): added to their call without parsing.
        self.fragments = FragmentPath(self)
        self.fragment_read = self.fragments.read
        # Set only within `feed_handing_over`: what the read hands the turn gate (handover.py). A
        # plain `feed` leaves it None, and the fast path then does nothing more per event.
        self.handing_over: Handover | None = None
        # The reasoning field held the answer (a K3 response close in it): the turn is answered
        # even when the text had already gone out as reasoning.
        self.answered_in_reasoning = False

    # -- public API ------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        if self.bypass:
            return [data] if data else []
        if self.plain_read(data):
            return [data]
        if self.fragments.ready and (held := self.fragment_read(data)) is not None:
            return held
        out: list[bytes] = []
        for event in self.decoder.feed(data):
            if self.bypass:  # turned to passthrough by an earlier event of this chunk
                out.append(event.raw)
            else:
                self._guarded_event(event, out)
        if self.bypass:
            out += self._take_undecoded()
        elif self.buffered > self.policy.stream_buffer_limit:
            self.log.add("stream.buffer_limit", None, self.buffered, self.policy.stream_buffer_limit)
            self.release_held(out)
        self.fast.refresh()
        if self.fragments.templates:
            self.fragments.refresh()
        return out

    def feed_handing_over(self, data: bytes) -> tuple[list[bytes], Handover]:
        """`feed`, and what the turn gate needs to judge the read without parsing its output."""
        handover = self.handing_over = Handover()
        try:
            return self.feed(data), handover
        finally:
            self.handing_over = None

    def end_handing_over(self, drop_partial: bool = False) -> tuple[list[bytes], Handover]:
        """`end`, and what the turn gate needs to judge its events without parsing them."""
        handover = self.handing_over = Handover()
        try:
            return self.end(drop_partial), handover
        finally:
            self.handing_over = None

    def end(self, drop_partial: bool = False) -> list[bytes]:
        """The upstream body ended: flush what is held, finish every choice, end with [DONE].
        `drop_partial`: the proxy ended the stream; a half-received event is not forwarded."""
        if self.bypass:
            return []
        out: list[bytes] = []
        if drop_partial:
            self.decoder = SSEDecoder()
        for event in self.decoder.end():
            if self.bypass:
                out.append(event.raw)
            else:
                self._guarded_event(event, out)
        self.fast.ready = self.fragments.ready = False
        if not self.done and not self.bypass:
            try:
                self._finish_all(out)
            except Exception as exc:
                self._fail(exc, out)
                return out
            out.append(DONE_EVENT)
            self.done = True
            self.log.add("done.synthesized", None, None, "[DONE]")
        return out

    def _guarded_event(self, event: SSEEvent, out: list[bytes]) -> None:
        """One event through the repairs; when they raise, what earlier events produced stays in
        `out`, what is held goes out as the upstream sent it, then this event raw, and the rest of
        the stream passes through (an exception costs a repair, never data)."""
        try:
            self._event(event, out)
        except Exception as exc:
            self._fail(exc, out)
            out.append(event.raw)

    def _fail(self, exc: Exception, out: list[bytes]) -> None:
        self.failure = exc
        self.log.add("repair.failed", None, f"{type(exc).__name__}: {exc}"[:300], "passthrough")
        self._release(out)

    def end_with_error(self, error_event: bytes) -> list[bytes]:
        """The stream is cut short (timeout, upstream failure): the client gets the text held
        back and every call (complete ones repaired, truncated ones as sent), then `error_event`,
        then [DONE]."""
        if self.done:
            return []
        self.fast.ready = self.fragments.ready = False
        out: list[bytes] = []
        if self.bypass:
            return [b"\n\n", error_event, DONE_EVENT]
        self.decoder = SSEDecoder()  # a half-received event is dropped, never forwarded
        for state in self.choices.values():
            state.finish(Ending.CUT, None, out)
        out.append(error_event)
        out.append(DONE_EVENT)
        self.done = True
        return out

    @property
    def all_finished(self) -> bool:
        """Every choice seen so far has had its finish_reason."""
        return self.finished_choices > 0 and self.finished_choices == len(self.choices)

    @property
    def tool_section_open(self) -> bool:
        """A tool call may be under way with nothing for the client to see: a tool section the
        scanner holds until it closes, a call whose arguments are still open, or a K3 request
        with tools whose choices have not finished (vLLM's K3 parser holds a call until it is
        complete: 32 s of silence for a 17.5K-character `write_file`, vllm PR #50627). The
        adapter gives such silence its own idle deadline and keeps the client's line alive."""
        for state in self.choices.values():
            if state.tool_section_open:
                return True
        return (
            self.facts.k3_model
            and self.facts.tools_declared
            and not self.done
            and (not self.choices or not self.all_finished)
        )

    @property
    def buffered(self) -> int:
        """Bytes held back: tool-call arguments, text that may be markup, an unfinished event.
        Checked after every upstream chunk, so written as plain loops."""
        held = self.decoder.pending
        for state in self.choices.values():
            held += state.buffered
        return held

    def undecoded(self) -> bytes:
        """Raw bytes received but not yet part of a whole event."""
        return self.decoder.undecoded()

    @property
    def turn(self) -> TurnSummary:
        first = self.choices[min(self.choices)] if self.choices else None
        return TurnSummary(
            content=self.content_seen,
            reasoning=self.reasoning_seen,
            tool_calls=sum(state.calls_delivered for state in self.choices.values()),
            finish_reason=first.finish_delivered if first is not None else None,
            truncated=any(state.truncated for state in self.choices.values()),
            done=self.done,
        )

    def release_held(self, out: list[bytes], include_undecoded: bool = True) -> None:
        """Forward everything held, unrepaired, and pass the rest of the stream through: used
        past the buffer limit, and by the adapter when a repair raised."""
        self._release(out)
        leftover = self._take_undecoded()
        if include_undecoded:
            out += leftover

    def _release(self, out: list[bytes]) -> None:
        """Held text and every held call go out as the upstream sent them, in order; from now on
        the stream passes through."""
        self.bypass = True
        self.fast.ready = self.fragments.ready = False
        for state in self.choices.values():
            state.release(out)

    def _take_undecoded(self) -> list[bytes]:
        leftover = self.decoder.undecoded()
        self.decoder = SSEDecoder()
        return [leftover] if leftover else []

    def _holding(self) -> bool:
        return any(state.holding for state in self.choices.values())

    # -- what the choices share ------------------------------------------------------------

    def note_once(self, kind: str, before: Any = None, after: Any = None) -> None:
        if kind not in self._once:
            self._once.add(kind)
            self.log.add(kind, None, before, after)

    def see_text(self, delta: dict[str, Any]) -> None:
        if not self.content_seen and delta.get("content"):
            self.content_seen = True
        if not self.reasoning_seen:
            for key in REASONING_KEYS:  # (a loop: no generator per delta)
                if delta.get(key):
                    self.reasoning_seen = True
                    break
        self.text_unseen = not (self.content_seen and self.reasoning_seen)

    def add_reasoning(self, delta: dict[str, Any], text: str) -> None:
        keys = [k for k in ("reasoning_content", "reasoning") if isinstance(delta.get(k), str)]
        for key in keys or [self.reasoning_key or "reasoning_content"]:
            delta[key] = (delta.get(key) or "") + text

    def chunk_event(self, choice_index: int, delta: dict[str, Any]) -> bytes:
        return self.encode(
            {**self.template, "choices": [{"index": choice_index, "delta": delta, "finish_reason": None}]}
        )

    def encode(self, chunk: dict[str, Any]) -> bytes:
        data = encode_data(orjson.dumps(chunk))
        if self.handing_over is not None:
            self.handing_over.add_chunk(data, chunk)
        return data

    def _pass(self, raw: bytes, chunk: dict[str, Any], out: list[bytes]) -> None:
        """`raw`, the event `chunk` was parsed from, goes out as it came."""
        out.append(raw)
        if self.handing_over is not None:
            self.handing_over.add_chunk(raw, chunk)

    # -- events ----------------------------------------------------------------------------

    def _event(self, event: SSEEvent, out: list[bytes]) -> None:
        self.events_in += 1
        if self.done:
            if event.data is not None:
                self.note_once("stream.after_done", event.data[:200].decode("utf-8", "replace"), None)
            return
        data = event.data
        if data is None:  # comments and keepalives pass as they are
            out.append(event.raw)
            return
        self.data_events_in += 1
        raw = event.raw if event.complete else encode_data(data)
        if data == DONE or (len(data) < 16 and data.strip() == DONE):
            self._finish_all(out)
            out.append(raw)
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            # NaN, invalid UTF-8...: forwarded as it came. Were anything held, the event would
            # overtake it and could split a call: then everything held goes out first and the
            # rest of the stream passes through, which is exactly what a direct client gets.
            self.note_once("stream.unparsed_event", data[:200].decode("utf-8", "replace"), None)
            if self._holding() or b"tool_calls" in data:
                self.log.add("stream.passthrough", None, "unparsed event", None)
                self._release(out)
            out.append(raw)
            return
        if not isinstance(chunk, dict):
            out.append(raw)
            return
        self._chunk(chunk, raw, out)

    def _choice(self, index: int) -> ChoiceRepairer:
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = ChoiceRepairer(index, self)
        return state

    def _chunk(self, chunk: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            if "error" in chunk:
                self._upstream_error = True  # no finish_reason is made up after an error
            self._pass(raw, chunk, out)  # usage-only chunks, error objects
            return
        if not self._have_template:
            self._have_template = True
            self.template.update({k: chunk[k] for k in _CHUNK_KEYS if k in chunk})
        if len(choices) == 1 and self._passes_unchanged(choices[0]):
            self._pass(raw, chunk, out)
            if chunk.get("usage") is None:
                self.fast.learn(choices[0], raw)
            return
        changed = False
        kept: list[Any] = []
        after: list[bytes] = []
        # A lone argument fragment of a held call (before its repair): its shape is learned below.
        fragment = fragment_call_index(choices[0]) if len(choices) == 1 and self.fast_path else None
        if fragment is not None and not self._choice(0).fragments_pass():
            fragment = None
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                kept.append(choice)
                continue
            index = choice.get("index")
            state = self._choice(index if isinstance(index, int) else position)
            choice_changed, keep = state.repair(choice, chunk, after)
            changed |= choice_changed
            if self.text_unseen and type(choice.get("delta")) is dict:
                self.see_text(choice["delta"])
            if keep:
                kept.append(choice)
        if not changed:
            self._pass(raw, chunk, out)
            if len(choices) == 1 and type(choices[0]) is dict and chunk.get("usage") is None:
                self.fast.learn(choices[0], raw)
            return
        if kept or chunk.get("usage") is not None:
            chunk["choices"] = kept
            out.append(self.encode(chunk))
            if fragment is not None and not after:
                self.fragments.learn(raw, fragment, out[-1])
        elif fragment is not None and not after:
            self.fragments.learn(raw, fragment, b"")
        out.extend(after)

    def _passes_unchanged(self, choice: Any) -> bool:
        """A text-only delta with nothing to repair: its choice repairer says so."""
        if type(choice) is not dict:
            return False
        index = choice.get("index")
        state = self._choice(index if isinstance(index, int) else 0)
        if not state.passes_unchanged(choice):
            return False
        if self.text_unseen:
            self.see_text(choice["delta"])
        return True

    def _finish_all(self, out: list[bytes]) -> None:
        """The stream ends ([DONE] or end of body): every choice is finished, and one that had no
        finish_reason gets one (ChoiceRepairer.finish_reason_at_end). Not after an error object:
        the client already failed the turn."""
        for state in self.choices.values():
            state.finish(Ending.FINISHED if state.finished else Ending.CUT, None, out)
            if self._upstream_error:
                continue
            reason = state.finish_reason_at_end()
            if reason is None:
                continue
            self.log.add("finish_reason.synthesized", None, None, reason)
            out.append(
                self.encode(
                    {**self.template, "choices": [{"index": state.index, "delta": {}, "finish_reason": reason}]}
                )
            )
