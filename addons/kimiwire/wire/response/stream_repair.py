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

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openrouter import details_only, reasoning_from_details
from kimiwire.wire.policy import Policy
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.response.answer_in_reasoning import reasoning_as_content, reasoning_is_answer
from kimiwire.wire.response.fast_path import (
    EVENT_REST,
    MAX_TEMPLATES,
    NO_TEMPLATE,
    PLAIN_ONLY,
    TEXT_BODY,
    PlainTemplate,
    PlainText,
    learn_template,
    text_of,
)
from kimiwire.wire.response.markup import (
    CONTENT,
    MARKER_PREFIX,
    REASONING,
    MarkupScanner,
    RecoveredCall,
    embedded_markup,
)
from kimiwire.wire.response.reasoning_field import TEXT_KEYS, rename_reasoning
from kimiwire.wire.response.think_tags import ThinkTagSplitter
from kimiwire.wire.response.tool_call_assembly import CallState, ChoiceAssembly, Ending, HeldCall, PassedCalls
from kimiwire.wire.response.tool_calls import (
    CUT_FINISH_REASONS,
    deliver_call,
    fix_finish_reason,
    restore_streamed_names,
)
from kimiwire.wire.sse import DONE, DONE_EVENT, SSEDecoder, SSEEvent, encode_data

_CHUNK_KEYS = ("id", "object", "created", "model", "system_fingerprint")
_TEXT_BODY = TEXT_BODY.match
_EVENT_REST = EVENT_REST.match
_EVENT_REST_TO_END = EVENT_REST.fullmatch
_OPEN = CallState.OPEN
_TEXT_ORDER = {key: position for position, key in enumerate(TEXT_KEYS)}


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


@dataclass(slots=True)
class _Choice:
    index: int
    calls: ChoiceAssembly
    passed: PassedCalls = field(default_factory=PassedCalls)  # passthrough mode: calls streamed as they came
    needs_finish: bool = False  # calls went out after the choice's last finish_reason
    finished: bool = False  # its finish_reason has been seen
    finish_delivered: Any = None
    scanners: dict[str, MarkupScanner] = field(default_factory=dict)
    think: ThinkTagSplitter | None = None
    cut: bool = False  # the output was cut (length, body ended, reset, timeout), not ended by the model
    extra_calls: int = 0  # calls delivered beyond those held: one whose arguments held markup becomes those inside
    recovered: set[int] = field(default_factory=set)  # id() of the held calls recovered from markup
    matched: set[int] = field(default_factory=set)  # id() of held upstream calls a recovered repeat matched
    native: list[tuple[str, Any]] = field(default_factory=list)  # (name, arguments) of tool-call deltas delivered

    @property
    def cut_call(self) -> bool:
        """A K3 call block in the text was cut off (it went out as text)."""
        return any(scanner.cut_call for scanner in self.scanners.values())

    @property
    def calls_delivered(self) -> int:
        return self.calls.emitted + self.passed.count + self.extra_calls

    @property
    def truncated(self) -> bool:
        return self.calls.truncated > 0 or self.passed.any_open or self.cut_call


class StreamRepairer:
    def __init__(self, facts: RequestFacts, policy: Policy) -> None:
        self.facts = facts
        self.policy = policy
        self.declared = facts.known_tool_names
        self.scan_markup = policy.markup == "recover"
        self.split_think = policy.think_tags == "split"
        # Thinking is off: reasoning deltas are the answer an engine misparsed (answer_in_reasoning.py).
        self.reasoning_to_content = self.split_think and reasoning_is_answer(facts, policy)
        self._reasoning_key: str | None = None  # the reasoning field the upstream uses
        self.log = RepairLog()
        self.done = False  # `data: [DONE]` has been emitted
        self.bypass = False  # past the buffer limit: forward the rest unrepaired
        self.failure: Exception | None = None  # a repair raised: what was held went out, the rest passes
        self.events_in = 0
        self.data_events_in = 0  # events that carry data: comments and keepalives do not count
        self._decoder = SSEDecoder()
        self._choices: dict[int, _Choice] = {}
        self._template: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._have_template = False
        self._finished_choices = 0
        self._once: set[str] = set()
        self._upstream_error = False  # an error object came in the stream
        self._content_seen = False
        self._reasoning_seen = False
        self._text_unseen = True  # content or reasoning not yet seen: checked on the fast path
        # The fast path (wire/response/fast_path.py): plain text deltas skip parsing when they
        # match an event the full path forwarded unchanged and the state lets them pass.
        self.fast_path = policy.reasoning_field == "keep"
        self._templates: list[PlainTemplate] = []
        self._template_last = NO_TEMPLATE  # the template the last fast read matched, tried first
        # A K3 request's reasoning is remembered (the answer may turn out to be in it), so its
        # texts go through the scanner on the fast path too.
        self._check_markup = self.scan_markup and (bool(self.declared) or facts.k3_model)
        # When a list, plain_read appends each event's text to it (for the turn gate, which must
        # see the texts of a turn not yet proven without parsing the events again).
        self.plain_texts: list[PlainText] | None = None
        self._plain_ready = False  # the state lets plain text pass: set after each full-path read
        self._content_blocked = False  # ... but only reasoning (think tags: content not begun)
        # The reasoning field held the answer (a K3 response close in it): the turn is answered
        # even when the text had already gone out as reasoning.
        self.answered_in_reasoning = False

    # -- public API ------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        if self.bypass:
            return [data] if data else []
        if self.plain_read(data):
            return [data]
        out: list[bytes] = []
        for event in self._decoder.feed(data):
            if self.bypass:  # turned to passthrough by an earlier event of this chunk
                out.append(event.raw)
            else:
                self._guarded_event(event, out)
        if self.bypass:
            out += self._take_undecoded()
        elif self.buffered > self.policy.stream_buffer_limit:
            self.log.add("stream.buffer_limit", None, self.buffered, self.policy.stream_buffer_limit)
            self.release_held(out)
        self._plain_ready = self._plain_state()
        return out

    def plain_read(self, data: bytes) -> int:
        """The fast path: the number of events in `data` when it is nothing but whole plain text
        events matching a template (wire/response/fast_path.py) that the full path would forward
        unchanged in the current state; their counts and text flags are taken as the full path
        takes them. 0 (and nothing changed) otherwise: the read goes to `feed`'s full path."""
        if not self._plain_ready:
            return 0
        # The usual read: one event of the shape the last read had. Kept flat: every event of a
        # stream passes here.
        template = self._template_last
        if not data.startswith(template.head) or (self._content_blocked and not template.reasoning):
            return self._plain_events(data)
        start = template.text_start
        closing = len(data) - template.end_size
        # Most texts are plain ASCII and the bytes after them the template's own: then the text
        # ends where those bytes begin. Anything else, the regular expressions decide.
        if (
            closing < start
            or not data.endswith(template.end)
            or (text := data[start:closing]).translate(PLAIN_ONLY) is not text
        ):
            body = _TEXT_BODY(data, start)
            if body is None:
                return self._plain_events(data)
            closing = body.end() - 1
            end = closing + template.tail_size
            if not data.startswith(template.tail, closing) or not (
                (len(data) - end == template.rest_size and data.endswith(template.rest))
                or _EVENT_REST_TO_END(data, end)
            ):
                return self._plain_events(data)
        if (
            closing > start
            and (self._text_unseen or self._check_markup)
            and not self._plain_text(template, data, start, closing, record=True)
        ):
            return 0
        self.events_in += 1
        self.data_events_in += 1
        if self.plain_texts is not None:
            self.plain_texts.append(PlainText(template, text_of(data[start:closing])))
        return 1

    def steady_lane(self) -> tuple[bytes, bytes, int, int] | None:
        """What lets a caller pass an event on its own until its next `feed` or `plain_read`
        (RepairingStream's steady branch: one Python frame less per event): the last template's
        (head, tail + rest, text start, len(tail + rest)). An event with that head and end and a
        text of PLAIN_ASCII bytes only (fast_path.PLAIN_ONLY) is one `plain_read` would take
        changing nothing but the two event counters, which the caller then adds itself (in bulk:
        `RepairingStream.settle`). None when a text would still change something: markup to scan,
        a text kind not seen yet, a gate taking the texts."""
        if not self._plain_ready or self._check_markup or self.plain_texts is not None:
            return None
        template = self._template_last
        if template.reasoning:
            if not self._reasoning_seen:
                return None
        elif self._content_blocked or not self._content_seen:
            return None
        return template.head, template.end, template.text_start, template.end_size

    def _plain_events(self, data: bytes) -> int:
        """plain_read for any number of events, each of any template."""
        size = len(data)
        position = events = 0
        texts: list[tuple[PlainTemplate, int, int]] = []
        template = NO_TEMPLATE
        while position < size:
            for template in self._templates:
                if data.startswith(template.head, position):
                    break
            else:
                return 0
            if self._content_blocked and not template.reasoning:
                return 0
            start = position + template.text_start
            body = _TEXT_BODY(data, start)
            if body is None:
                return 0
            closing = body.end() - 1
            if not data.startswith(template.tail, closing):
                return 0
            end = closing + template.tail_size
            if data.startswith(template.rest, end):
                position = end + template.rest_size
            else:
                rest = _EVENT_REST(data, end)
                if rest is None:
                    return 0
                position = rest.end()
            texts.append((template, start, closing))
            events += 1
        if not events:
            return 0
        if self._text_unseen or self._check_markup:
            for seen, start, closing in texts:
                if closing > start and not self._plain_text(seen, data, start, closing):
                    return 0
            if self._check_markup:  # every text passes: now they count as delivered
                for seen, start, closing in texts:
                    scanner = self._scanner(self._choices[0], seen.key)
                    if closing > start and scanner.keeps_delivered:
                        scanner.delivered(text_of(data[start:closing]))
        self._template_last = template
        self.events_in += events
        self.data_events_in += events
        if self.plain_texts is not None:
            self.plain_texts += [PlainText(seen, text_of(data[start:closing])) for seen, start, closing in texts]
        return events

    def _plain_text(self, template: PlainTemplate, data: bytes, start: int, closing: int, record: bool = False) -> bool:
        """A matched event's non-empty text: the markup scanner decides when the request names
        tools (a name may begin at the end of the text) or goes to K3; the turn's text flags are
        set. `record`: the text counts as delivered when it passes."""
        if self._check_markup:
            scanner = self._scanner(self._choices[0], template.key)
            text = text_of(data[start:closing])
            if not scanner.passes_unchanged(text):
                return False
            if record and scanner.keeps_delivered:
                scanner.delivered(text)
        if self._text_unseen:
            if template.reasoning:
                self._reasoning_seen = True
            else:
                self._content_seen = True
            self._text_unseen = not (self._content_seen and self._reasoning_seen)
        return True

    def _plain_state(self) -> bool:
        """Plain text of choice 0 passes unchanged: it is open and nothing of it is held."""
        if not (self.fast_path and self._templates) or self.bypass or self.done or self._decoder.pending:
            return False
        state = self._choices.get(0)
        if state is None or state.finished:
            return False
        for scanner in state.scanners.values():
            if scanner.pending or scanner.edge_close or scanner.route != scanner.field:
                return False
        # Think tags: nothing held; content only once the choice's content has begun (before
        # that it may still be reasoning), reasoning once the splitter knows reasoning has its own
        # field (the first reasoning delta tells it).
        self._content_blocked = False
        if self.split_think:
            think = state.think
            if think is None or think.pending or (think.state == "start" and think.prefilled):
                return False
            self._content_blocked = think.state != "content"
        return True

    def _learn(self, choice: dict[str, Any], raw: bytes) -> None:
        """`raw` went out unchanged: when its only choice is a plain text delta of choice 0 (one
        _passes_unchanged would take), its shape becomes a template for the fast path."""
        delta = choice.get("delta")
        if (
            choice.get("index", 0) != 0
            or type(delta) is not dict
            or choice.get("finish_reason") is not None
            or "usage" in choice
            or delta.get("tool_calls") is not None
        ):
            return
        key = None
        for name, value in delta.items():
            if value is None:
                continue
            if key is None and name in TEXT_KEYS and type(value) is str:
                key = name
                continue
            return
        if key is None or (self.reasoning_to_content and key != "content"):
            return
        for known in self._templates:
            if raw.startswith(known.head):
                return
        template = learn_template(raw, key, key != "content", "role" in delta)
        if template is not None:
            if len(self._templates) >= MAX_TEMPLATES:
                del self._templates[0]
            self._templates.append(template)
            self._template_last = template

    def end(self, drop_partial: bool = False) -> list[bytes]:
        """The upstream body ended: flush what is held, finish every choice, end with [DONE].
        `drop_partial`: the proxy ended the stream; a half-received event is not forwarded."""
        if self.bypass:
            return []
        out: list[bytes] = []
        if drop_partial:
            self._decoder = SSEDecoder()
        for event in self._decoder.end():
            if self.bypass:
                out.append(event.raw)
            else:
                self._guarded_event(event, out)
        self._plain_ready = False
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
        self._plain_ready = False
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
    def tool_section_open(self) -> bool:
        """A tool call may be under way with nothing for the client to see: a tool section the
        scanner holds until it closes, a call whose arguments are still open, or a K3 request
        with tools whose choices have not finished (vLLM's K3 parser holds a call until it is
        complete: 32 s of silence for a 17.5K-character `write_file`, vllm PR #50627). The
        adapter gives such silence its own idle deadline and keeps the client's line alive."""
        for state in self._choices.values():
            if state.finished:
                continue
            pending = state.calls.pending
            if pending and pending[-1].state is _OPEN and not pending[-1].args_closed():
                return True
            if state.passed.any_open:
                return True
            for scanner in state.scanners.values():
                if scanner.section_open or MARKER_PREFIX in scanner.pending:
                    return True
        return (
            self.facts.k3_model
            and self.facts.tools_declared
            and not self.done
            and (not self._choices or not self.all_finished)
        )

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
            if state.think is not None:
                held += state.think.held
        return held

    def undecoded(self) -> bytes:
        """Raw bytes received but not yet part of a whole event."""
        return self._decoder.undecoded()

    @property
    def turn(self) -> TurnSummary:
        first = self._choices[min(self._choices)] if self._choices else None
        return TurnSummary(
            content=self._content_seen,
            reasoning=self._reasoning_seen,
            tool_calls=sum(state.calls_delivered for state in self._choices.values()),
            finish_reason=first.finish_delivered if first is not None else None,
            truncated=any(state.truncated for state in self._choices.values()),
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
        self._plain_ready = False
        for state in self._choices.values():
            if state.think is not None:
                reasoning, content = state.think.finish()
                if reasoning:
                    out.append(self._chunk_event(state.index, {self._reasoning_key or "reasoning_content": reasoning}))
                if content:
                    out.append(self._chunk_event(state.index, {"content": content}))
            for key, scanner in state.scanners.items():
                held = scanner.edge_close + scanner.pending
                if held:
                    out.append(self._chunk_event(state.index, {key: held}))
                    self._see_text({key: held})
                    scanner.pending = scanner.edge_close = ""
            assembly = state.calls
            while assembly.pending:
                call = assembly.pending[0]
                index = assembly.emitted + state.passed.indexes + state.extra_calls
                out += self._call_events(state.index, index, call.id, call.name, call.arguments())
                assembly.mark_emitted(call)

    def _take_undecoded(self) -> list[bytes]:
        leftover = self._decoder.undecoded()
        self._decoder = SSEDecoder()
        return [leftover] if leftover else []

    def _holding(self) -> bool:
        for state in self._choices.values():
            if state.calls.pending or any(scanner.pending for scanner in state.scanners.values()):
                return True
        return False

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
            # NaN, invalid UTF-8...: forwarded as it came. Were anything held, the event would
            # overtake it and could split a call: then everything held goes out first and the
            # rest of the stream passes through, which is exactly what a direct client gets.
            self._note_once("stream.unparsed_event", data[:200].decode("utf-8", "replace"), None)
            if self._holding() or b"tool_calls" in data:
                self.log.add("stream.passthrough", None, "unparsed event", None)
                self._release(out)
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
            if "error" in chunk:
                self._upstream_error = True  # no finish_reason is made up after an error
            out.append(raw)  # usage-only chunks, error objects
            return
        if not self._have_template:
            self._have_template = True
            self._template.update({k: chunk[k] for k in _CHUNK_KEYS if k in chunk})
        if len(choices) == 1 and self._passes_unchanged(choices[0]):
            out.append(raw)
            if self.fast_path and chunk.get("usage") is None:
                self._learn(choices[0], raw)
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
            if self._text_unseen and type(choice.get("delta")) is dict:
                self._see_text(choice["delta"])
            if keep:
                kept.append(choice)
        if not changed:
            out.append(raw)
            if self.fast_path and len(choices) == 1 and type(choices[0]) is dict and chunk.get("usage") is None:
                self._learn(choices[0], raw)
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
            if reasoning_from_details(delta, REASONING_KEYS):  # OpenRouter's reasoning_details only
                self._note_once("reasoning.from_details", "reasoning_details", "reasoning")
                changed = True
            changed = self._texts(state, delta) or changed
            # `tool_calls: null` (SGLang 0.5.5 writes it in every delta) carries no call: left as sent
            if delta.get("tool_calls") is not None:
                if self.policy.tool_stream == "whole":
                    tool_deltas = delta.pop("tool_calls")
                    changed = True
                    if isinstance(tool_deltas, list):
                        self._absorb(state, tool_deltas)
                elif isinstance(delta["tool_calls"], list):
                    if delta["tool_calls"]:
                        state.passed.see(delta["tool_calls"])
                        changed |= restore_streamed_names(delta["tool_calls"], self.facts, self.log)
                    elif self.policy.finish == "fix":  # vllm #54701: `tool_calls: []` deltas
                        del delta["tool_calls"]
                        changed = True
                        self._note_once("tool_calls.empty_dropped", [], None)
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
        # The choice is finished: held text goes into this delta, every call is complete, or
        # truncated when the output was cut (`length`).
        if not state.finished:
            state.finished = True
            self._finished_choices += 1
        if delta is None:
            delta = choice["delta"] = {}
        ready = []
        ending = Ending.CUT if finish in CUT_FINISH_REASONS else Ending.FINISHED
        if self._finish_choice(state, ending, delta, ready):
            changed = True
        fixed = fix_finish_reason(
            finish, state.calls_delivered > 0, None, self.log, self.policy, truncated=state.truncated
        )
        state.needs_finish = False
        state.finish_delivered = fixed
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
        if type(delta) is not dict or delta.get("tool_calls") is not None or details_only(delta):
            return False
        if self.policy.reasoning_field != "keep" or (self.reasoning_to_content and _has_reasoning(delta)):
            return False
        index = choice.get("index")
        state = self._choice(index if isinstance(index, int) else 0)
        if self.split_think:
            content = delta.get("content")
            splitter = self._splitter(state)
            if type(content) is str and content:
                if not splitter.passes_unchanged(content):
                    return False
            elif splitter.state == "start" and (delta.get("reasoning_content") or delta.get("reasoning")):
                splitter.reasoning_seen()
        if self.scan_markup:
            for key in TEXT_KEYS:
                text = delta.get(key)
                if type(text) is str and text and not self._scanner(state, key).passes_unchanged(text):
                    return False
            for key, scanner in state.scanners.items():
                text = delta.get(key)
                if type(text) is str and text and scanner.keeps_delivered:
                    scanner.delivered(text)
        if self._text_unseen:
            self._see_text(delta)
        return True

    def _see_text(self, delta: dict[str, Any]) -> None:
        if not self._content_seen and delta.get("content"):
            self._content_seen = True
        if not self._reasoning_seen and any(delta.get(key) for key in TEXT_KEYS[1:]):
            self._reasoning_seen = True
        self._text_unseen = not (self._content_seen and self._reasoning_seen)

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
            field = CONTENT if key == "content" else REASONING
            scanner = state.scanners[key] = MarkupScanner(
                self.declared,
                field,
                keep_copy=field == REASONING and self.facts.k3_model,
                # Content's end, and reasoning's (an engine's re-sent buffer may hold both).
                keep_tail=self.facts.tools_declared,
            )
            if len(state.scanners) > 1:
                # Held texts are flushed in the scanners' order: kept in TEXT_KEYS order, not in the
                # order the fields first came, which differs when the fast path took some texts.
                ordered = sorted(state.scanners.items(), key=lambda item: _TEXT_ORDER.get(item[0], len(_TEXT_ORDER)))
                state.scanners.clear()
                state.scanners.update(ordered)
        return scanner

    def _moved(self, state: _Choice, delta: dict[str, Any]) -> bool:
        """Text a scanner moved to the other field (K3 channels) goes into this delta's field."""
        moved_any = False
        for key, scanner in list(state.scanners.items()):
            if scanner.events:
                for kind in scanner.events:
                    self._note_once(kind)
                    if kind == "k3.answer_in_reasoning":
                        self.answered_in_reasoning = True
                scanner.events.clear()
            if not scanner.moved:
                continue
            text = "".join(scanner.moved)
            scanner.moved.clear()
            if not text:
                continue
            moved_any = True
            if scanner.field == REASONING:
                previous = delta.get("content")
                delta["content"] = (previous if isinstance(previous, str) else "") + text
                self._scanner(state, "content").delivered(text)
            else:
                self._add_reasoning(delta, text)
            to = "content" if scanner.field == REASONING else "reasoning"
            self.log.add(f"k3.moved_to_{to}", None, key, len(text))
        return moved_any

    def _splitter(self, state: _Choice) -> ThinkTagSplitter:
        if state.think is None:
            state.think = ThinkTagSplitter(prefilled=self.facts.thinking_prefilled)
        return state.think

    def _add_reasoning(self, delta: dict[str, Any], text: str) -> None:
        keys = [k for k in ("reasoning_content", "reasoning") if isinstance(delta.get(k), str)]
        for key in keys or [self._reasoning_key or "reasoning_content"]:
            delta[key] = (delta.get(key) or "") + text

    def _record_think(self, splitter: ThinkTagSplitter) -> None:
        for kind in splitter.events:
            self.log.add(kind, None, None, None)
        splitter.events.clear()

    def _think(self, state: _Choice, delta: dict[str, Any]) -> bool:
        """Reasoning that arrived as content with think tags goes to the reasoning field."""
        splitter = self._splitter(state)
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str) and delta[key]:
                self._reasoning_key = self._reasoning_key or key
                splitter.reasoning_seen()
        reasoning, content = "", None
        if delta.get("tool_calls"):
            reasoning, content = splitter.end_reasoning()
        text = delta.get("content")
        if isinstance(text, str) and text and (content is not None or not splitter.passes_unchanged(text)):
            more_reasoning, more_content = splitter.feed(text)
            reasoning, content = reasoning + more_reasoning, (content or "") + more_content
        if content is None and not reasoning:
            return False
        self._record_think(splitter)
        if content:
            delta["content"] = content
        else:
            delta.pop("content", None)
        if reasoning:
            self._add_reasoning(delta, reasoning)
        return True

    def _flush_think(self, state: _Choice, delta: dict[str, Any]) -> bool:
        splitter = state.think
        if splitter is None:
            return False
        reasoning, content = splitter.end_reasoning() if state.calls.calls or state.passed.count else ("", "")
        more_reasoning, more_content = splitter.finish()
        reasoning, content = reasoning + more_reasoning, content + more_content
        self._record_think(splitter)
        if reasoning:
            self._add_reasoning(delta, reasoning)
        if content and self.scan_markup:
            content, calls = self._scanner(state, "content").feed(content)
            self._recovered(state, "content", calls)
        if content:
            previous = delta.get("content")
            delta["content"] = (previous if isinstance(previous, str) else "") + content
        return bool(reasoning or content)

    def _texts(self, state: _Choice, delta: dict[str, Any]) -> bool:
        moved = self._reasoning_to_content(delta) if self.reasoning_to_content else False
        changed = self._think(state, delta) if self.split_think else False
        changed |= moved
        if not self.scan_markup:
            return changed
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
            scanner = self._scanner(state, key)
            if scanner.edge_start and self._reasoning_seen:  # not the start of the reasoning field
                scanner.edge_start = False
            emitted, calls = scanner.feed(text)
            if emitted == text and not calls and not scanner.moved and not scanner.events:
                continue
            changed = True
            if calls and self._recovered(state, key, calls) and emitted and scanner.tail is not None:
                emitted = self._unrepeated(state, scanner, emitted)
            if emitted:
                delta[key] = emitted
            else:
                del delta[key]
        return self._moved(state, delta) or changed

    def _reasoning_to_content(self, delta: dict[str, Any]) -> bool:
        """Thinking is off: the reasoning of this delta is the answer, and goes out as content."""
        moved = reasoning_as_content(delta)
        if moved:
            self.log.add("reasoning.answer_when_thinking_off", None, "reasoning", len(moved))
        return bool(moved)

    def _flush_texts(self, state: _Choice, delta: dict[str, Any]) -> bool:
        changed = self._flush_think(state, delta)
        for key, scanner in state.scanners.items():
            if not scanner.pending and not scanner.edge_close:
                continue
            emitted, calls = scanner.finish()
            if calls and self._recovered(state, key, calls) and emitted and scanner.tail is not None:
                emitted = self._unrepeated(state, scanner, emitted)
            if emitted:
                previous = delta.get(key)
                delta[key] = (previous if isinstance(previous, str) else "") + emitted
            changed = True
        return self._moved(state, delta) or changed

    def _recovered(self, state: _Choice, key: str, calls: list[RecoveredCall]) -> bool:
        """Recovered calls join the held ones, except a call that repeats one the upstream
        already sent as a tool-call delta (same name and arguments): vLLM 0.11.1-0.13.0's Kimi
        parser re-sends its buffer, call markup included, as content at the section end
        (`vllm/tool_parsers/kimi_k2_tool_parser.py`: `return DeltaMessage(content=remaining)`).
        Returns whether a call was such a repeat."""
        repeated = False
        for recovered in calls:
            if self._repeats_native(state, recovered):
                repeated = True
                self.log.add("markup.repeated_call", None, key, recovered.name)
                continue
            call = state.calls.add_whole(recovered.raw_id, recovered.name, recovered.arguments)
            state.recovered.add(id(call))
            self.log.add(f"markup.recovered_{recovered.form}", call.position, key, recovered.name)
        return repeated

    def _repeats_native(self, state: _Choice, recovered: RecoveredCall) -> bool:
        try:
            value = orjson.loads(recovered.arguments)
        except orjson.JSONDecodeError:
            return False
        for n, (name, arguments) in enumerate(state.native):
            if name == recovered.name and arguments == value:
                del state.native[n]  # each call the upstream sent absorbs one repeat
                return True
        for call in state.calls.pending:
            if id(call) in state.recovered or call.name != recovered.name or id(call) in state.matched:
                continue
            try:
                if orjson.loads(call.arguments()) == value:
                    state.matched.add(id(call))
                    return True
            except orjson.JSONDecodeError:
                continue
        return False

    def _unrepeated(self, state: _Choice, scanner: MarkupScanner, emitted: str) -> str:
        """Text that came with repeated calls and repeats the end of what the client already
        got (vLLM's re-sent buffer) is dropped. With no reasoning parser, vLLM 0.13's buffer holds
        the reasoning, `</think>` and the text (the think splitter sent the first as reasoning and
        removed the tag): then it is the end of the reasoning followed by the end of the text."""
        tail = scanner.tail or ""
        before = tail[: len(tail) - len(emitted)]
        if not emitted.strip() or scanner.field != CONTENT:
            return emitted
        if before.endswith(emitted):
            scanner.tail = before
            self.log.add("text.repeated", None, "content", emitted[-200:])
            return ""
        if repeats_across_think(emitted, self._reasoning_tail(state), before):
            scanner.tail = before
            self.log.add("text.repeated", None, "reasoning and content", emitted[-200:])
            return ""
        return emitted

    @staticmethod
    def _reasoning_tail(state: _Choice) -> str:
        for key in TEXT_KEYS[1:]:
            scanner = state.scanners.get(key)
            if scanner is not None and scanner.tail:
                return scanner.tail
        return ""

    # -- tool calls ------------------------------------------------------------------------

    def _absorb(self, state: _Choice, tool_deltas: list[Any]) -> None:
        state.calls.absorb(tool_deltas)

    def _finish_choice(self, state: _Choice, ending: Ending, delta: dict[str, Any] | None, out: list[bytes]) -> bool:
        """The one way a choice ends, whatever ended it (its finish_reason, [DONE], the end of the
        body, an error): held text is flushed (into `delta`, else into an event of its own), open
        calls become complete or truncated, and every ready call goes out in order. Returns
        whether text was flushed."""
        own_delta: dict[str, Any] = {} if delta is None else delta
        state.cut = ending is Ending.CUT
        flushed = self._flush_texts(state, own_delta)
        if flushed and delta is None and own_delta:
            out.append(self._chunk_event(state.index, own_delta))
            self._see_text(own_delta)
        state.calls.end(ending)
        ready = self._take_ready(state)
        if ready:
            state.needs_finish = True
            out.extend(ready)
        return flushed

    def _take_ready(self, state: _Choice) -> list[bytes]:
        assembly = state.calls
        pending = assembly.pending
        if not pending or pending[0].state is _OPEN:  # the common case, on every tool fragment
            return []
        events: list[bytes] = []
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
        offset = state.passed.indexes + state.extra_calls
        index = state.calls.emitted + offset
        if call.upstream_index is not None and call.upstream_index != index:
            self.log.add("index.renumbered", call.position, call.upstream_index, index)
        arguments = call.arguments()
        truncated = call.state is CallState.TRUNCATED
        # A call the model left open to write calls inside its arguments (opencode#37297) is not cut
        # output: the complete calls inside go out; when the output was cut, the call goes as sent.
        items = (
            [(call.name or "", call.id, arguments)]
            if state.cut and truncated
            else self._embedded(state, call, arguments)
        )
        if len(items) != 1 or items[0][2] is not arguments:
            truncated = False
            if call.state is CallState.TRUNCATED:  # not delivered: the calls inside it go out instead
                call.state = CallState.COMPLETE
        events: list[bytes] = []
        for n, (name, upstream_id, call_arguments) in enumerate(items):
            index = state.calls.emitted + offset + n
            finished = deliver_call(
                name, upstream_id, call_arguments, index, truncated, self.facts, self.policy, self.log
            )
            if finished is None:  # as the upstream sent it
                events += self._call_events(state.index, index, upstream_id, name, call_arguments)
            else:
                function = finished["function"]
                events += self._call_events(state.index, index, finished["id"], function["name"], function["arguments"])
        state.extra_calls += len(items) - 1
        if id(call) not in state.recovered and id(call) not in state.matched and not truncated:
            with contextlib.suppress(orjson.JSONDecodeError):
                state.native.append((call.name or "", orjson.loads(arguments)))
        if call.fragments > 1:
            self.log.add("stream.tool_call_joined", call.position, call.fragments, 1)
        return events

    def _embedded(self, state: _Choice, call: HeldCall, arguments: str) -> list[tuple[str, Any, str]]:
        """The call as it goes out, or, when its complete arguments hold Kimi markup, the complete
        calls inside them: a call whose arguments hold markup is never delivered."""
        found = embedded_markup(arguments, self.declared) if self.scan_markup and MARKER_PREFIX in arguments else None
        if found is None:
            return [(call.name or "", call.id, arguments)]
        position = state.calls.emitted + state.extra_calls
        self.log.add("markup.in_arguments", position, arguments, [c.name for c in found.calls])
        for incomplete in found.incomplete:
            self.log.add("markup.in_arguments_incomplete", position, incomplete.name, incomplete.arguments)
        return [(c.name, c.raw_id, c.arguments) for c in found.calls]

    def _finish_all(self, out: list[bytes]) -> None:
        """The stream ends ([DONE] or end of body): every choice is finished, and one that had no
        finish_reason gets one (pi-ai 1.x fails the turn without: earendil-works/pi #5793,
        #8473): `length` when a call was cut off (never a call to run), `tool_calls` when calls
        went out, else `stop`. Not after an error object: the client already failed the turn."""
        for state in self._choices.values():
            self._finish_choice(state, Ending.FINISHED if state.finished else Ending.CUT, None, out)
            if (state.finished and not state.needs_finish) or self._upstream_error:
                continue
            if state.truncated:
                reason = "length"
            elif state.calls_delivered:
                reason = "tool_calls"
            else:
                reason = "stop"
            state.needs_finish = False
            state.finish_delivered = reason
            if not state.finished:
                state.finished = True
                self._finished_choices += 1
            self.log.add("finish_reason.synthesized", None, None, reason)
            out.append(
                self._encode(
                    {**self._template, "choices": [{"index": state.index, "delta": {}, "finish_reason": reason}]}
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


def repeats_across_think(text: str, reasoning_tail: str, content_tail: str) -> bool:
    """`text` is an end of the reasoning delivered followed by an end of the content delivered
    (the reasoning part not empty). Bounded: the tails are at most TAIL_LIMIT characters, and
    only the split points the common end of `text` and `content_tail` allows are tried."""
    if not reasoning_tail or len(text) > len(reasoning_tail) + len(content_tail):
        return False
    common = 0
    limit = min(len(text), len(content_tail))
    while common < limit and text[-1 - common] == content_tail[-1 - common]:
        common += 1
    last = reasoning_tail[-1]
    return any(
        text[split - 1] == last and reasoning_tail.endswith(text[:split])
        for split in range(max(1, len(text) - common), len(text) + 1)
    )


def _has_reasoning(delta: dict[str, Any]) -> bool:
    return any(type(delta.get(key)) is str and delta[key] for key in TEXT_KEYS[1:])
