"""Whether a turn gave the client an answer, judged on what the repairer would deliver (sans-IO).

A streamed turn is known empty only at its end. The gate sits after the stream repairer: events
that cannot change the verdict go out at once (the role chunk, reasoning, whitespace-only content,
comments), so the client sees progress as before; the first real content proves the turn and from
then on everything passes. Until then, the turn's ending (finish chunk, usage, `[DONE]`) and its
tool calls (whole, when invalid calls are retried) are held, in order, so a retry's answer can
still be delivered as if it had come first time. What is held is small (the calls the repairer
already holds whole, a finish chunk) and bounded by `hold_limit`, past which the gate opens.

The verdict, at the end: `None` (the turn answered, or told the client why not: an error, a
`length` or `content_filter` finish), or one of the checked kinds: `empty` (no content, no call,
after the `</think>` split and markup recovery; empty `tool_calls: []` deltas count as nothing),
`reasoning_only`, `invalid_call` (arguments that do not parse to an object, or Kimi markup left
in them), `schema` (arguments that violate the declared schema; opt-in), `forced_tool` (the client
forced a tool the upstream was asked for with `auto`, and the turn did not call it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from kimiwire.wire.codecs.sse import DONE, SSEDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.response.fast_path import PlainText
from kimiwire.wire.response.handover import Handover
from kimiwire.wire.response.schema_check import schema_violation
from kimiwire.wire.retry.failure_kinds import TurnCheck, VerdictKind

_TEMPLATE_KEYS = ("id", "created", "model", "system_fingerprint")
_EXPLAINED_FINISHES = frozenset({"length", "content_filter"})
MARKUP_TOKEN = "<|"


@dataclass(frozen=True, slots=True)
class TurnVerdict:
    kind: VerdictKind
    detail: str


@dataclass(slots=True)
class TurnSeen:
    """What a turn's output held, choice by choice merged (plain data, for checks and records)."""

    content: bool = False  # content other than whitespace
    reasoning_chars: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, arguments) of whole calls
    finish_reasons: list[Any] = field(default_factory=list)
    error: bool = False  # an error object came (upstream or proxy)


def call_problem(name: str, arguments: Any, facts: RequestFacts, check_schema: bool) -> TurnVerdict | None:
    """Why a whole tool call is unusable to a client, or None."""
    if not isinstance(arguments, str):
        return TurnVerdict("invalid_call", f"{name}: arguments are not a string")
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return TurnVerdict("invalid_call", f"{name}: arguments do not parse: {arguments[:120]!r}")
    if not isinstance(value, dict):
        return TurnVerdict("invalid_call", f"{name}: arguments are not a JSON object")
    if MARKUP_TOKEN in arguments and "|>" in arguments:
        return TurnVerdict("invalid_call", f"{name}: Kimi markup left in the arguments")
    if check_schema:
        problem = schema_violation(facts.tools.get(name), value)
        if problem:
            return TurnVerdict("schema", f"{name}: {problem}")
    return None


def forced_tool_missing(seen: TurnSeen, facts: RequestFacts) -> TurnVerdict | None:
    forced = facts.forced_tool
    if forced is None or any(name and (forced == "*" or name == forced) for name, _ in seen.calls):
        return None
    wanted = "a tool call" if forced == "*" else f"a call to {forced}"
    return TurnVerdict("forced_tool", f"the client forced {wanted} (sent upstream as tool_choice auto)")


def judge(seen: TurnSeen, facts: RequestFacts, checks: frozenset[TurnCheck]) -> TurnVerdict | None:
    """The verdict on a finished turn (streamed or not) for the checks that are on."""
    if seen.error or any(r in _EXPLAINED_FINISHES for r in seen.finish_reasons):
        return None
    if "forced_tool" in checks and (missing := forced_tool_missing(seen, facts)) is not None:
        return missing
    if seen.content:
        return None
    if seen.calls:
        if not checks & {"invalid_call", "schema"}:
            return None
        for name, arguments in seen.calls:
            problem = call_problem(name, arguments, facts, "schema" in checks)
            if problem is not None and problem.kind in checks:
                return problem
        return None
    finish = ",".join(str(r) for r in seen.finish_reasons) or "none"
    if seen.reasoning_chars:
        if "reasoning_only" in checks:
            return TurnVerdict("reasoning_only", f"{seen.reasoning_chars} characters of reasoning, finish {finish}")
        return None
    if "empty" in checks:
        return TurnVerdict("empty", f"no content and no tool call, finish {finish}")
    return None


def upstream_started_calls(raw: bytes) -> bool:
    """Whether an upstream stream sent any tool-call fragment (a stall after that is not a turn
    without an answer: the call was under way). Scans the raw body once, on the rare stall path."""
    if b"tool_calls" not in raw:
        return False
    decoder = SSEDecoder()
    for event in decoder.feed(raw) + decoder.end():
        if event.data is None or b"tool_calls" not in event.data:
            continue
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            continue
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("tool_calls"), list) and delta["tool_calls"]:
                return True
    return False


def completion_seen(body: Any) -> TurnSeen:
    """What a (repaired) non-streamed chat completion holds."""
    seen = TurnSeen()
    choices = body.get("choices") if isinstance(body, dict) else None
    if isinstance(body, dict) and body.get("error") is not None:
        seen.error = True
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        seen.finish_reasons.append(choice.get("finish_reason"))
        message = choice.get("message")
        if isinstance(message, dict):
            _texts(message, seen)
            for call in message.get("tool_calls") or []:
                _call(call, seen)
    return seen


def _texts(container: dict[str, Any], seen: TurnSeen) -> None:
    content = container.get("content")
    if isinstance(content, str) and content.strip():
        seen.content = True
    elif isinstance(content, list) and content:
        seen.content = True  # content parts: not something Kimi servers send; count as an answer
    for key in REASONING_KEYS:
        text = container.get(key)
        if isinstance(text, str):
            seen.reasoning_chars += len(text)


def _call(call: Any, seen: TurnSeen) -> bool:
    if not isinstance(call, dict):
        return False
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    seen.calls.append((str(function.get("name") or ""), function.get("arguments")))
    return True


class TurnGate:
    """Sits after a StreamRepairer: `feed` its output, deliver what comes back; `verdict` at the end."""

    def __init__(
        self,
        facts: RequestFacts,
        checks: frozenset[TurnCheck],
        hold_calls: bool,
        hold_limit: int = 8 * 1024 * 1024,
        watch_stall: bool = False,
    ) -> None:
        self.facts = facts
        self.checks = checks
        # A forced tool: content proves nothing and calls are held until the turn ends.
        self.forced = "forced_tool" in checks and facts.forced_tool is not None
        self.hold_calls = (hold_calls and bool(checks & {"invalid_call", "schema"})) or self.forced
        self.hold_limit = hold_limit
        # Nothing checked: the gate is open from the start (or, when only stalls are retried, it
        # just notes whether an answer started).
        self.proven = (not checks and not watch_stall) or (checks == {"forced_tool"} and not self.forced)
        self.seen = TurnSeen()
        self.template: dict[str, Any] = {}
        self.role_delivered = False
        self.held: list[bytes] = []
        self._held_bytes = 0
        self._decoder = SSEDecoder()
        self._calls: dict[tuple[Any, Any], int] = {}  # (choice, call index) -> its place in seen.calls

    @property
    def holding(self) -> bool:
        return bool(self.held)

    def take(self, data: bytes, events: list[bytes], handover: Handover) -> list[bytes]:
        """One read of the repairer judged: `events`, what `StreamRepairer.feed_handing_over` made
        of the upstream's `data`, with what it handed over (handover.py)."""
        return self.feed_plain(data, handover.plain) if handover.plain else self.feed(events, handover)

    def feed(self, events: list[bytes], handover: Handover | None = None) -> list[bytes]:
        """`handover`: the chunks the repairer parsed or built `events` from, read instead of
        parsing those events again."""
        if self.proven or not events:
            return events
        out: list[bytes] = []
        for position, event in enumerate(events):
            chunk = handover.chunk_of(event) if handover is not None and not self._decoder.pending else None
            if chunk is not None:
                proves, hold, role = self._inspect_chunk(chunk)
            else:
                proves, hold, role = self._inspect(event)
            if proves:
                self.proven = True
                self.role_delivered |= role
                out.extend(self.held)
                out.extend(events[position:])
                self.held = []
                return out
            if not (self.held or hold):
                out.append(event)
                self.role_delivered |= role
                continue
            self.held.append(event)
            self._held_bytes += len(event)
            if self._held_bytes > self.hold_limit:
                out.extend(self.open())
                out.extend(events[position + 1 :])
                return out
        return out

    def feed_plain(self, data: bytes, texts: list[PlainText]) -> list[bytes]:
        """`feed` for a read the repairer's fast path took (whole plain text events, `texts` in
        order): the same verdicts and records without parsing the events again."""
        if self.proven:
            return [data]
        if self.held or not self.template or self.forced:
            return self.feed([data])
        seen = self.seen
        for text in texts:
            self.role_delivered |= text.template.role
            if text.template.reasoning:
                seen.reasoning_chars += len(text.text) * text.template.copies  # (counted under each name)
            elif text.text.strip():
                seen.content = True
                self.proven = True
                break
        return [data]

    def open(self) -> list[bytes]:
        """Stop judging: what is held goes out, everything after passes."""
        self.proven = True
        held, self.held = self.held, []
        return held

    def discard(self) -> list[bytes]:
        """The turn is being retried or replaced: what was held is dropped (returned for the record)."""
        held, self.held = self.held, []
        return held

    def verdict(self) -> TurnVerdict | None:
        if self.proven:
            return None
        return judge(self.seen, self.facts, self.checks)

    # -- looking at one event --------------------------------------------------------------

    def _inspect(self, event: bytes) -> tuple[bool, bool, bool]:
        """Record what `event` carries: (it proves the turn: real content, or a call that is not
        judged; it must wait for the verdict; it carries the role)."""
        hold = role = False
        for sse in self._decoder.feed(event):
            if sse.data is None:
                continue
            if sse.data.strip() == DONE:
                hold = True
                continue
            try:
                chunk = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(chunk, dict):
                continue
            proves, chunk_hold, chunk_role = self._inspect_chunk(chunk)
            role |= chunk_role
            if proves:
                return True, False, role
            hold |= chunk_hold
        return False, hold, role

    def _inspect_chunk(self, chunk: dict[str, Any]) -> tuple[bool, bool, bool]:
        """`_inspect` for one parsed chunk."""
        if chunk.get("error") is not None:
            self.seen.error = True
            return False, True, False
        return self._chunk(chunk)

    def _call_delta(self, choice: Any, position: int, call: Any) -> None:
        """A call goes out as OpenAI streams it (a first delta with the name and `arguments: ""`,
        then its arguments), or whole in one delta: assembled by (choice, index)."""
        if not isinstance(call, dict):
            return
        function = given if isinstance(given := call.get("function"), dict) else {}
        key = (choice, call.get("index", position))
        assembled = self._calls.get(key)
        if assembled is None:
            assembled = self._calls[key] = len(self.seen.calls)
            self.seen.calls.append(("", ""))
        name, arguments = self.seen.calls[assembled]
        more = function.get("arguments")
        if isinstance(more, str):
            arguments = (arguments if isinstance(arguments, str) else "") + more
        elif more is not None:
            arguments = more
        self.seen.calls[assembled] = (name or str(function.get("name") or ""), arguments)

    def _chunk(self, chunk: dict[str, Any]) -> tuple[bool, bool, bool]:
        if not self.template:
            self.template = {k: chunk[k] for k in _TEMPLATE_KEYS if k in chunk}
        hold = chunk.get("usage") is not None
        role = False
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                role |= "role" in delta
                before = self.seen.content
                _texts(delta, self.seen)
                if self.seen.content and not before and not self.forced:
                    return True, False, role
                hold |= self.forced and self.seen.content
                calls = delta.get("tool_calls")
                if isinstance(calls, list) and calls:
                    if not self.hold_calls:
                        return True, False, role
                    for position, call in enumerate(calls):
                        self._call_delta(choice.get("index", 0), position, call)
                    hold = True
            finish = choice.get("finish_reason")
            if finish is not None:
                self.seen.finish_reasons.append(finish)
                hold = True
        return False, hold, role
