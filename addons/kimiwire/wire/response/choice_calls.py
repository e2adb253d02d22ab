"""The tool calls of one streamed choice (sans-IO): held calls handed out whole, in order, as
OpenAI streams them; calls recovered from the text's markup join them, except repeats of calls
the upstream already sent; calls passed through as they came are counted. Part of the choice's
repairer (choice_repair.py)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from kimiwire.wire.response.markup import MARKER_PREFIX, RecoveredCall, embedded_markup
from kimiwire.wire.response.tool_call_assembly import CallState, ChoiceAssembly, Ending, HeldCall, PassedCalls
from kimiwire.wire.response.tool_calls import deliver_call

if TYPE_CHECKING:
    from kimiwire.wire.response.stream_repair import StreamRepairer

_OPEN = CallState.OPEN


class ChoiceCalls:
    def __init__(self, index: int, stream: StreamRepairer) -> None:
        self.index = index  # the choice's
        self.stream = stream
        self.assembly = ChoiceAssembly(stream.log, stream.note_once)
        self.passed = PassedCalls()  # passthrough mode: calls streamed as they came
        self.cut = False  # the output was cut (length, body ended, reset, timeout), not ended by the model
        self.extra_calls = 0  # calls delivered beyond those held: one whose arguments held markup becomes those inside
        self.recovered_ids: set[int] = set()  # id() of the held calls recovered from markup
        self.matched: set[int] = set()  # id() of held upstream calls a recovered repeat matched
        self.native: list[tuple[str, Any]] = []  # (name, arguments) of tool-call deltas delivered

    @property
    def delivered(self) -> int:
        return self.assembly.emitted + self.passed.count + self.extra_calls

    @property
    def truncated(self) -> bool:
        return self.assembly.truncated > 0 or self.passed.any_open

    @property
    def any(self) -> bool:
        """A call came (held or passed through)."""
        return bool(self.assembly.calls or self.passed.count)

    @property
    def open(self) -> bool:
        """A call is under way: its arguments not yet closed."""
        pending = self.assembly.pending
        return bool(pending and pending[-1].state is _OPEN and not pending[-1].args_closed()) or self.passed.any_open

    def end(self, ending: Ending) -> list[bytes]:
        """The choice ends: open calls become complete or truncated; every ready call goes out."""
        self.cut = ending is Ending.CUT
        self.assembly.end(ending)
        return self.take_ready()

    def absorb(self, tool_deltas: list[Any]) -> None:
        self.assembly.absorb(tool_deltas)

    def recovered_calls(self, key: str, calls: list[RecoveredCall]) -> bool:
        """Recovered calls join the held ones, except a call that repeats one the upstream
        already sent as a tool-call delta (same name and arguments): vLLM 0.11.1-0.13.0's Kimi
        parser re-sends its buffer, call markup included, as content at the section end
        (`vllm/tool_parsers/kimi_k2_tool_parser.py`: `return DeltaMessage(content=remaining)`).
        Returns whether a call was such a repeat."""
        log = self.stream.log
        repeated = False
        for recovered in calls:
            if self._repeats_native(recovered):
                repeated = True
                log.add("markup.repeated_call", None, key, recovered.name)
                continue
            call = self.assembly.add_whole(recovered.raw_id, recovered.name, recovered.arguments)
            self.recovered_ids.add(id(call))
            log.add(f"markup.recovered_{recovered.form}", call.position, key, recovered.name)
        return repeated

    def _repeats_native(self, recovered: RecoveredCall) -> bool:
        try:
            value = orjson.loads(recovered.arguments)
        except orjson.JSONDecodeError:
            return False
        for n, (name, arguments) in enumerate(self.native):
            if name == recovered.name and arguments == value:
                del self.native[n]  # each call the upstream sent absorbs one repeat
                return True
        for call in self.assembly.pending:
            if id(call) in self.recovered_ids or call.name != recovered.name or id(call) in self.matched:
                continue
            try:
                if orjson.loads(call.arguments()) == value:
                    self.matched.add(id(call))
                    return True
            except orjson.JSONDecodeError:
                continue
        return False

    def take_ready(self) -> list[bytes]:
        assembly = self.assembly
        pending = assembly.pending
        if not pending or pending[0].state is _OPEN:  # the common case, on every tool fragment
            return []
        events: list[bytes] = []
        call = assembly.next_ready()
        while call is not None:
            events += self._call_out(call)
            assembly.mark_emitted(call)
            call = assembly.next_ready()
        return events

    def call_events(self, index: int, call_id: Any, name: Any, arguments: str) -> list[bytes]:
        """One call as OpenAI streams it: a first delta with index, id, type, name and empty
        arguments, then one delta with the complete arguments. Both a client that keeps one
        current block (pi-ai) and one that adds up every delta's arguments (OpenAI's guide)
        rebuild exactly these arguments."""
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        events = [self.stream.chunk_event(self.index, {"tool_calls": [head]})]
        if arguments:
            tail = {"index": index, "function": {"arguments": arguments}}
            events.append(self.stream.chunk_event(self.index, {"tool_calls": [tail]}))
        return events

    def _call_out(self, call: HeldCall) -> list[bytes]:
        stream = self.stream
        offset = self.passed.indexes + self.extra_calls
        index = self.assembly.emitted + offset
        if call.upstream_index is not None and call.upstream_index != index:
            stream.log.add("index.renumbered", call.position, call.upstream_index, index)
        arguments = call.arguments()
        truncated = call.state is CallState.TRUNCATED
        # A call the model left open to write calls inside its arguments (opencode#37297) is not cut
        # output: the complete calls inside go out; when the output was cut, the call goes as sent.
        items = [(call.name or "", call.id, arguments)] if self.cut and truncated else self._embedded(call, arguments)
        if len(items) != 1 or items[0][2] is not arguments:
            truncated = False
            if call.state is CallState.TRUNCATED:  # not delivered: the calls inside it go out instead
                call.state = CallState.COMPLETE
        events: list[bytes] = []
        for n, (name, upstream_id, call_arguments) in enumerate(items):
            index = self.assembly.emitted + offset + n
            finished = deliver_call(
                name, upstream_id, call_arguments, index, truncated, stream.facts, stream.policy, stream.log
            )
            if finished is None:  # as the upstream sent it
                events += self.call_events(index, upstream_id, name, call_arguments)
            else:
                function = finished["function"]
                events += self.call_events(index, finished["id"], function["name"], function["arguments"])
        self.extra_calls += len(items) - 1
        if id(call) not in self.recovered_ids and id(call) not in self.matched and not truncated:
            with contextlib.suppress(orjson.JSONDecodeError):
                self.native.append((call.name or "", orjson.loads(arguments)))
        if call.fragments > 1:
            stream.log.add("stream.tool_call_joined", call.position, call.fragments, 1)
        return events

    def _embedded(self, call: HeldCall, arguments: str) -> list[tuple[str, Any, str]]:
        """The call as it goes out, or, when its complete arguments hold Kimi markup, the complete
        calls inside them: a call whose arguments hold markup is never delivered."""
        stream = self.stream
        found = (
            embedded_markup(arguments, stream.declared) if stream.scan_markup and MARKER_PREFIX in arguments else None
        )
        if found is None:
            return [(call.name or "", call.id, arguments)]
        position = self.assembly.emitted + self.extra_calls
        stream.log.add("markup.in_arguments", position, arguments, [c.name for c in found.calls])
        for incomplete in found.incomplete:
            stream.log.add("markup.in_arguments_incomplete", position, incomplete.name, incomplete.arguments)
        return [(c.name, c.raw_id, c.arguments) for c in found.calls]

    def release(self, out: list[bytes]) -> None:
        """Every held call goes out as the upstream sent it, in order."""
        assembly = self.assembly
        while assembly.pending:
            call = assembly.pending[0]
            index = assembly.emitted + self.passed.indexes + self.extra_calls
            out += self.call_events(index, call.id, call.name, call.arguments())
            assembly.mark_emitted(call)
