"""The stream repairer: upstream SSE bytes in, repaired SSE bytes out (sans-IO).

Text (content, reasoning) goes out in the same event it arrived in; only text that may be the
start of Kimi markup is held back. Tool-call fragments are held and each call goes out once,
whole (index, id, type, name, complete arguments), as soon as it is complete: when the next
call starts and its JSON is closed, at `finish_reason`, or at the end of the stream. A client
that keeps "one current block" (pi-ai) then rebuilds exactly the calls the model made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.policy import Policy
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.response.markup import MarkupScanner, RecoveredCall
from kimiwire.wire.response.reasoning_field import TEXT_KEYS, rename_reasoning
from kimiwire.wire.response.tool_call_assembly import CallState, ChoiceAssembly, Ending, HeldCall
from kimiwire.wire.response.tool_calls import finalize_call, fix_finish_reason
from kimiwire.wire.sse import DONE, DONE_EVENT, SSEDecoder, SSEEvent, encode_data

_CHUNK_KEYS = ("id", "object", "created", "model", "system_fingerprint")


@dataclass(slots=True)
class _Choice:
    index: int
    calls: ChoiceAssembly
    needs_finish: bool = False  # calls went out before the choice's finish_reason
    upstream_tool_indexes: int = 0  # passthrough mode: calls the upstream streamed itself
    finished: bool = False  # its finish_reason has been seen
    scanners: dict[str, MarkupScanner] = field(default_factory=dict)


class StreamRepairer:
    def __init__(self, facts: RequestFacts, policy: Policy) -> None:
        self.facts = facts
        self.policy = policy
        self.declared = frozenset(facts.tools)
        self.scan_markup = policy.markup == "recover"
        self.log = RepairLog()
        self.done = False  # `data: [DONE]` has been emitted
        self.bypass = False  # past the buffer limit: forward the rest unrepaired
        self.events_in = 0
        self.data_events_in = 0  # events that carry data: comments and keepalives do not count
        self._decoder = SSEDecoder()
        self._choices: dict[int, _Choice] = {}
        self._template: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._have_template = False
        self._finished_choices = 0
        self._once: set[str] = set()

    # -- public API ------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        if self.bypass:
            return [data] if data else []
        out: list[bytes] = []
        for event in self._decoder.feed(data):
            self._event(event, out)
        if self.buffered > self.policy.stream_buffer_limit:
            self.log.add("stream.buffer_limit", None, self.buffered, self.policy.stream_buffer_limit)
            self.release_held(out)
        return out

    def end(self, drop_partial: bool = False) -> list[bytes]:
        """The upstream body ended: flush what is held, finish every choice, end with [DONE].
        `drop_partial`: the proxy ended the stream; a half-received event is not forwarded."""
        if self.bypass:
            return []
        out: list[bytes] = []
        if drop_partial:
            self._decoder = SSEDecoder()
        for event in self._decoder.end():
            self._event(event, out)
        if not self.done:
            self._finish_all(out)
            out.append(DONE_EVENT)
            self.done = True
            self.log.add("done.synthesized", None, None, "[DONE]")
        return out

    def end_with_error(self, error_event: bytes) -> list[bytes]:
        """The stream is cut short (timeout, upstream failure): the client gets the text held
        back and every call (complete ones repaired, truncated ones as sent), then `error_event`,
        then [DONE]."""
        if self.done:
            return []
        out: list[bytes] = []
        if self.bypass:
            return [b"\n\n", error_event, DONE_EVENT]
        self._decoder = SSEDecoder()  # a half-received event is dropped, never forwarded
        for state in self._choices.values():
            self._finish_choice(state, Ending.CUT, None, out)
        out.append(error_event)
        out.append(DONE_EVENT)
        self.done = True
        return out

    @property
    def all_finished(self) -> bool:
        """Every choice seen so far has had its finish_reason."""
        return self._finished_choices > 0 and self._finished_choices == len(self._choices)

    @property
    def buffered(self) -> int:
        """Bytes held back: tool-call arguments, text that may be markup, an unfinished event.
        Checked after every upstream chunk, so written as plain loops."""
        held = self._decoder.pending
        for state in self._choices.values():
            held += state.calls.buffered
            for scanner in state.scanners.values():
                if scanner.pending:
                    held += len(scanner.pending)
        return held

    def undecoded(self) -> bytes:
        """Raw bytes received but not yet part of a whole event."""
        return self._decoder.undecoded()

    def release_held(self, out: list[bytes], include_undecoded: bool = True) -> None:
        """Forward everything held, unrepaired, and pass the rest of the stream through: used
        past the buffer limit, and by the adapter when a repair raised."""
        self.bypass = True
        for state in self._choices.values():
            for key, scanner in state.scanners.items():
                if scanner.pending:
                    out.append(self._chunk_event(state.index, {key: scanner.pending}))
                    scanner.pending = ""
            assembly = state.calls
            while assembly.pending:
                call = assembly.pending[0]
                index = assembly.emitted + state.upstream_tool_indexes
                out += self._call_events(state.index, index, call.id, call.name, call.arguments())
                assembly.mark_emitted(call)
        leftover = self._decoder.undecoded()
        self._decoder = SSEDecoder()
        if leftover and include_undecoded:
            out.append(leftover)

    # -- events ----------------------------------------------------------------------------

    def _note_once(self, kind: str, before: Any = None, after: Any = None) -> None:
        if kind not in self._once:
            self._once.add(kind)
            self.log.add(kind, None, before, after)

    def _event(self, event: SSEEvent, out: list[bytes]) -> None:
        self.events_in += 1
        if self.done:
            if event.data is not None:
                self._note_once("stream.after_done", event.data[:200].decode("utf-8", "replace"), None)
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
            self._note_once("stream.unparsed_event", data[:200].decode("utf-8", "replace"), None)
            out.append(raw)
            return
        if not isinstance(chunk, dict):
            out.append(raw)
            return
        self._chunk(chunk, raw, out)

    def _choice(self, index: int) -> _Choice:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice(index, ChoiceAssembly(self.log, self._note_once))
        return state

    def _chunk(self, chunk: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            out.append(raw)  # usage-only chunks, error objects
            return
        if not self._have_template:
            self._have_template = True
            self._template.update({k: chunk[k] for k in _CHUNK_KEYS if k in chunk})
        if len(choices) == 1 and self._passes_unchanged(choices[0]):
            out.append(raw)
            return
        changed = False
        kept: list[Any] = []
        after: list[bytes] = []
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                kept.append(choice)
                continue
            index = choice.get("index")
            state = self._choice(index if isinstance(index, int) else position)
            choice_changed, keep = self._process_choice(state, choice, chunk, after)
            changed |= choice_changed
            if keep:
                kept.append(choice)
        if not changed:
            out.append(raw)
            return
        if kept or chunk.get("usage") is not None:
            chunk["choices"] = kept
            out.append(encode_data(orjson.dumps(chunk)))
        out.extend(after)

    def _process_choice(
        self, state: _Choice, choice: dict[str, Any], chunk: dict[str, Any], after: list[bytes]
    ) -> tuple[bool, bool]:
        """Repair one choice of a chunk in place; events that must follow the chunk go to
        `after`. Returns (changed, keep the choice in the chunk)."""
        changed = False
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = None
        else:
            changed = self._texts(state, delta)
            if "tool_calls" in delta:
                if self.policy.tool_stream == "whole":
                    tool_deltas = delta.pop("tool_calls")
                    changed = True
                    if isinstance(tool_deltas, list):
                        self._absorb(state, tool_deltas)
                elif isinstance(delta["tool_calls"], list):
                    state.upstream_tool_indexes = max(
                        [state.upstream_tool_indexes]
                        + [
                            tc["index"] + 1
                            for tc in delta["tool_calls"]
                            if isinstance(tc, dict) and isinstance(tc.get("index"), int)
                        ]
                    )
            if rename_reasoning(delta, self.policy.reasoning_field):
                changed = True
                self._note_once("reasoning.field_renamed", None, self.policy.reasoning_field)
        usage = choice.get("usage")
        if self.policy.finish == "fix" and isinstance(usage, dict) and chunk.get("usage") is None:
            chunk["usage"] = usage
            changed = True
            self._note_once("usage.hoisted", None, "usage")
        finish = choice.get("finish_reason")
        if finish is None:
            ready = self._take_ready(state)
            if not ready:
                return changed, not changed or self._meaningful(choice)
            after.extend(ready)
            state.needs_finish = True
            return True, self._meaningful(choice)
        # The choice is finished: held text goes into this delta, every call is complete.
        if not state.finished:
            state.finished = True
            self._finished_choices += 1
        if delta is None:
            delta = choice["delta"] = {}
        ready: list[bytes] = []
        if self._finish_choice(state, Ending.FINISHED, delta, ready):
            changed = True
        fixed = fix_finish_reason(finish, state.calls.emitted > 0, None, self.log, self.policy)
        state.needs_finish = False
        if not ready:
            if fixed != finish:
                choice["finish_reason"] = fixed
                changed = True
            return changed, True
        after.extend(ready)
        finish_choice: dict[str, Any] = {"index": state.index, "delta": {}, "finish_reason": fixed}
        if "usage" in choice:
            finish_choice["usage"] = choice.pop("usage")
        choice["finish_reason"] = None
        after.append(
            self._encode(
                {
                    **self._template,
                    "choices": [finish_choice],
                    **({"usage": chunk.pop("usage")} if chunk.get("usage") is not None else {}),
                }
            )
        )
        return True, self._meaningful(choice)

    def _passes_unchanged(self, choice: Any) -> bool:
        """A text-only delta with nothing to repair (most events): forwarded as it came, at once.
        Mirrors what _process_choice would conclude, without its bookkeeping."""
        if type(choice) is not dict or choice.get("finish_reason") is not None or "usage" in choice:
            return False
        delta = choice.get("delta")
        if type(delta) is not dict or "tool_calls" in delta:
            return False
        if self.policy.reasoning_field != "keep":
            return False
        index = choice.get("index")
        state = self._choice(index if isinstance(index, int) else 0)
        if not self.scan_markup:
            return True
        for key in TEXT_KEYS:
            text = delta.get(key)
            if type(text) is str and text and not self._scanner(state, key).passes_unchanged(text):
                return False
        return True

    @staticmethod
    def _meaningful(choice: dict[str, Any]) -> bool:
        if choice.get("finish_reason") is not None or choice.get("logprobs"):
            return True
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return False
        return any(v not in (None, "") for v in delta.values()) or "role" in delta

    # -- text and markup -------------------------------------------------------------------

    def _scanner(self, state: _Choice, key: str) -> MarkupScanner:
        scanner = state.scanners.get(key)
        if scanner is None:
            scanner = state.scanners[key] = MarkupScanner(self.declared)
        return scanner

    def _texts(self, state: _Choice, delta: dict[str, Any]) -> bool:
        if not self.scan_markup:
            return False
        changed = False
        mirrored = isinstance(delta.get("reasoning_content"), str) and delta.get("reasoning_content") == delta.get(
            "reasoning"
        )
        for key in TEXT_KEYS:
            text = delta.get(key)
            if not isinstance(text, str) or not text:
                continue
            if key == "reasoning" and mirrored:  # the same text under both names: scan it once
                mirror = delta.get("reasoning_content")  # gone when the scanner held all of it
                if mirror:
                    delta["reasoning"] = mirror
                else:
                    del delta["reasoning"]
                changed |= mirror != text
                continue
            emitted, calls = self._scanner(state, key).feed(text)
            if emitted == text and not calls:
                continue
            changed = True
            if emitted:
                delta[key] = emitted
            else:
                del delta[key]
            self._recovered(state, key, calls)
        return changed

    def _flush_texts(self, state: _Choice, delta: dict[str, Any]) -> bool:
        changed = False
        for key, scanner in state.scanners.items():
            if not scanner.pending:
                continue
            emitted, calls = scanner.finish()
            if emitted:
                previous = delta.get(key)
                delta[key] = (previous if isinstance(previous, str) else "") + emitted
            self._recovered(state, key, calls)
            changed = True
        return changed

    def _recovered(self, state: _Choice, key: str, calls: list[RecoveredCall]) -> None:
        for recovered in calls:
            call = state.calls.add_whole(recovered.raw_id, recovered.name, recovered.arguments)
            self.log.add(f"markup.recovered_{recovered.form}", call.position, key, recovered.name)

    # -- tool calls ------------------------------------------------------------------------

    def _absorb(self, state: _Choice, tool_deltas: list[Any]) -> None:
        state.calls.absorb(tool_deltas)

    def _finish_choice(self, state: _Choice, ending: Ending, delta: dict[str, Any] | None, out: list[bytes]) -> bool:
        """The one way a choice ends, whatever ended it (its finish_reason, [DONE], the end of the
        body, an error): held text is flushed (into `delta`, else into an event of its own), open
        calls become complete or truncated, and every ready call goes out in order. Returns
        whether text was flushed."""
        own_delta: dict[str, Any] = {} if delta is None else delta
        flushed = self._flush_texts(state, own_delta)
        if flushed and delta is None and own_delta:
            out.append(self._chunk_event(state.index, own_delta))
        state.calls.end(ending)
        ready = self._take_ready(state)
        if ready:
            state.needs_finish = True
            out.extend(ready)
        return flushed

    def _take_ready(self, state: _Choice) -> list[bytes]:
        events: list[bytes] = []
        assembly = state.calls
        call = assembly.next_ready()
        while call is not None:
            events += self._call_out(state, call)
            assembly.mark_emitted(call)
            call = assembly.next_ready()
        return events

    def _call_events(self, choice_index: int, index: int, call_id: Any, name: Any, arguments: str) -> list[bytes]:
        """One call as OpenAI streams it: a first delta with index, id, type, name and empty
        arguments, then one delta with the complete arguments. Both a client that keeps one
        current block (pi-ai) and one that adds up every delta's arguments (OpenAI's guide)
        rebuild exactly these arguments."""
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        events = [self._chunk_event(choice_index, {"tool_calls": [head]})]
        if arguments:
            tail = {"index": index, "function": {"arguments": arguments}}
            events.append(self._chunk_event(choice_index, {"tool_calls": [tail]}))
        return events

    def _call_out(self, state: _Choice, call: HeldCall) -> list[bytes]:
        index = state.calls.emitted + state.upstream_tool_indexes
        if call.upstream_index is not None and call.upstream_index != index:
            self.log.add("index.renumbered", call.position, call.upstream_index, index)
        if call.state is CallState.TRUNCATED:
            self.log.add("args.truncated", index, call.name, call.arguments()[-200:])
            return self._call_events(state.index, index, call.id, call.name, call.arguments())
        finished = finalize_call(call.name or "", call.id, call.arguments(), index, self.facts, self.policy, self.log)
        if call.fragments > 1:
            self.log.add("stream.tool_call_joined", call.position, call.fragments, 1)
        function = finished["function"]
        return self._call_events(state.index, index, finished["id"], function["name"], function["arguments"])

    def _finish_all(self, out: list[bytes]) -> None:
        """The stream ends ([DONE] or end of body): flush every choice still holding something."""
        for state in self._choices.values():
            self._finish_choice(state, Ending.FINISHED, None, out)
            if state.needs_finish:
                state.needs_finish = False
                self.log.add("finish_reason.synthesized", None, None, "tool_calls")
                out.append(
                    self._encode(
                        {
                            **self._template,
                            "choices": [{"index": state.index, "delta": {}, "finish_reason": "tool_calls"}],
                        }
                    )
                )

    # -- encoding --------------------------------------------------------------------------

    def _chunk_event(self, choice_index: int, delta: dict[str, Any]) -> bytes:
        return self._encode(
            {**self._template, "choices": [{"index": choice_index, "delta": delta, "finish_reason": None}]}
        )

    @staticmethod
    def _encode(chunk: dict[str, Any]) -> bytes:
        return encode_data(orjson.dumps(chunk))
