"""Tool-call assembly for one choice of a streamed response: fragments in, calls out in order.

Each call the model makes moves through named states:

    OPEN       fragments are arriving
    COMPLETE   the model finished it: its arguments closed and a later call started, or the
               output ended (a call without any arguments counts as complete when the model
               ended the choice itself)
    TRUNCATED  the output ended (body ended, `length`, reset, timeout, or the model stopped)
               while its arguments were still open: it is never completed into a runnable call
    EMITTED    sent to the client

Calls leave in the model's order: a call is ready only when every call before it is ready too.
Work per fragment is O(its length): whether arguments are closed is decided by an incremental
scanner, fed lazily, only for calls that received fragments since it last looked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from kimiwire.wire.repairs import RepairLog


class CallState(Enum):
    OPEN = "open"
    COMPLETE = "complete"
    TRUNCATED = "truncated"
    EMITTED = "emitted"


class Ending(Enum):
    """How a choice's output ended, which decides what its open calls become."""

    FINISHED = "finished"  # the model ended it (finish_reason stop/tool_calls/...)
    CUT = "cut"  # body ended, `length`, reset, timeout


_OPEN, _EMITTED = CallState.OPEN, CallState.EMITTED
_TOKEN = re.compile(r'[{}\[\]"]|[^\s{}\[\]"]+')
_IN_STRING = re.compile(r'["\\]')


class ArgumentsScanner:
    """Tells, piece by piece, whether a text begins with a closed JSON value (an object, an array
    or a string): once it has, the model completed the value and whatever follows (a duplicate,
    garbage) is for the argument repair to judge. A cut-off prefix is never closed. O(length)
    in total over all pieces, and nothing after the value is looked at; never decodes."""

    __slots__ = ("broken", "closed", "depth", "escape", "in_string")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False  # the last piece ended with a backslash inside a string
        self.closed = False
        self.broken = False  # more closing brackets than opening ones: never closed again

    def feed(self, text: str) -> None:
        if self.closed or self.broken or not text:
            return
        position, size = 0, len(text)
        depth, in_string, closed = self.depth, self.in_string, False  # not closed yet: returned above
        if self.escape:
            self.escape = False
            position = 1
        while position < size:
            if in_string:
                match = _IN_STRING.search(text, position)
                if match is None:
                    break
                if match.group() == "\\":
                    if match.end() == size:
                        self.escape = True
                    position = match.end() + 1
                    continue
                in_string = False
                position = match.end()
                if depth == 0:
                    closed = True
                    break
                continue
            match = _TOKEN.search(text, position)
            if match is None:
                break
            token = match.group()
            position = match.end()
            if token == '"':
                in_string = True
            elif token == "{" or token == "[":
                depth += 1
            elif token == "}" or token == "]":
                depth -= 1
                if depth <= 0:
                    self.broken = depth < 0
                    closed = depth == 0
                    break
            elif depth == 0:
                self.broken = True  # a bare scalar at the top: not an object
                break
        self.depth, self.in_string, self.closed = depth, in_string, closed


def arguments_closed(text: Any) -> bool:
    """Whole arguments (JSON responses): a decoded object, or a string holding one closed value."""
    if isinstance(text, dict):
        return True
    if not isinstance(text, str):
        return False
    scanner = ArgumentsScanner()
    scanner.feed(text)
    return scanner.closed


@dataclass(slots=True, eq=False)
class HeldCall:
    position: int  # order of appearance in the choice
    upstream_index: int | None = None
    id: Any = None
    name: str | None = None
    parts: list[str] = field(default_factory=list)
    size: int = 0
    fragments: int = 0
    state: CallState = CallState.OPEN
    scanner: ArgumentsScanner = field(default_factory=ArgumentsScanner)
    scanned: int = 0  # parts already fed to the scanner
    dirty: bool = False  # has parts the scanner has not seen

    def arguments(self) -> str:
        return "".join(self.parts)

    def args_closed(self) -> bool:
        parts = self.parts
        if self.scanned < len(parts):
            unseen = parts[self.scanned] if self.scanned == len(parts) - 1 else "".join(parts[self.scanned :])
            self.scanner.feed(unseen)  # one regex pass over what came since the last look
            self.scanned = len(parts)
        self.dirty = False
        return self.scanner.closed

    @property
    def ready(self) -> bool:
        return self.state is CallState.COMPLETE or self.state is CallState.TRUNCATED


class ChoiceAssembly:
    """The calls of one choice: held, completed, and handed out in order."""

    def __init__(self, log: RepairLog, note_once: Callable[..., None]) -> None:
        self.log = log
        self.note_once = note_once
        self.calls: list[HeldCall] = []  # every call, in order of appearance
        self.pending: list[HeldCall] = []  # not yet emitted, in the order they will leave
        self.by_upstream_index: dict[int, HeldCall] = {}
        self.current: HeldCall | None = None
        self.emitted = 0
        self.truncated = 0  # calls emitted with arguments cut off
        self.buffered = 0  # argument bytes held
        self._dirty: list[HeldCall] = []

    # -- calls in ------------------------------------------------------------------------------

    def new_call(self, upstream_index: int | None = None) -> HeldCall:
        """A call starts. It leaves after the calls before it in the model's order: by upstream
        index where there is one (a later index that completes first waits), else by appearance."""
        call = HeldCall(len(self.calls), upstream_index)
        self.calls.append(call)
        pending = self.pending
        place = len(pending)
        if upstream_index is not None:
            while place and (before := pending[place - 1].upstream_index) is not None and before > upstream_index:
                place -= 1
        pending.insert(place, call)
        return call

    def absorb(self, tool_deltas: list[Any]) -> None:
        for tool_delta in tool_deltas:
            if not isinstance(tool_delta, dict):
                continue
            function = tool_delta.get("function")
            if not isinstance(function, dict):
                function = {}
            upstream_index = tool_delta.get("index")
            delta_id = tool_delta.get("id") or None
            name = function.get("name") or None
            if isinstance(upstream_index, int) and not isinstance(upstream_index, bool):
                call = self.by_upstream_index.get(upstream_index)
                if call is None:
                    self.complete_closed()
                    call = self.by_upstream_index[upstream_index] = self.new_call(upstream_index)
            else:
                current = self.current
                if (
                    current is None
                    or current.state is not _OPEN
                    or (delta_id and current.id and delta_id != current.id)
                    or (name and not delta_id and current.args_closed())
                ):
                    self.complete_closed()
                    call = self.new_call()
                    self.note_once("index.missing", upstream_index, call.position)
                else:
                    call = current
            if call.state is _EMITTED:
                self.log.add("stream.late_fragment", call.position, function.get("arguments"), None)
                continue
            if delta_id and not call.id:
                call.id = delta_id
            if name and not call.name:
                call.name = name
            arguments = function.get("arguments")
            if arguments is not None and not isinstance(arguments, str):
                arguments = orjson.dumps(arguments).decode()
            self.add_fragment(call, arguments)

    def add_fragment(self, call: HeldCall, arguments: str | None) -> None:
        """One fragment of `call`'s arguments came (the fast path adds those it takes here too)."""
        if arguments:
            call.parts.append(arguments)
            call.size += len(arguments)
            self.buffered += len(arguments)
            if not call.dirty:
                call.dirty = True
                self._dirty.append(call)
        call.fragments += 1
        self.current = call

    def add_whole(self, raw_id: Any, name: str, arguments: str) -> HeldCall:
        """A call that arrived whole (recovered from markup): complete unless its arguments are
        open, in which case the way the choice ends decides."""
        call = self.new_call()
        call.id, call.name, call.parts, call.fragments = raw_id, name, [arguments], 1
        call.size = len(arguments)
        self.buffered += call.size
        if call.args_closed():
            call.state = CallState.COMPLETE
        return call

    # -- completion ----------------------------------------------------------------------------

    def complete_closed(self) -> None:
        """A new call starts: earlier open calls whose arguments are closed are complete (with
        interleaved parallel calls, one whose JSON is still open keeps waiting). Only calls that
        received fragments since the last look are scanned."""
        if not self._dirty:
            return
        for call in self._dirty:
            if call.args_closed() and call.state is CallState.OPEN:
                call.state = CallState.COMPLETE
        self._dirty.clear()

    def end(self, ending: Ending) -> None:
        """The choice's output ended: every open call becomes complete or truncated."""
        self._dirty.clear()
        for call in self.pending:
            if call.state is CallState.OPEN:
                if call.args_closed() or (ending is Ending.FINISHED and not call.arguments().strip()):
                    call.state = CallState.COMPLETE
                else:
                    call.state = CallState.TRUNCATED

    # -- calls out -----------------------------------------------------------------------------

    def next_ready(self) -> HeldCall | None:
        """The next call to emit, if it is ready (calls behind an unready one wait)."""
        pending = self.pending
        if pending and pending[0].ready:
            return pending[0]
        return None

    def mark_emitted(self, call: HeldCall) -> None:
        """Called once the call's events are built: the cursor never passes an unemitted call."""
        if self.pending and self.pending[0] is call:
            del self.pending[0]
        else:
            self.pending.remove(call)
        if call.state is CallState.TRUNCATED:
            self.truncated += 1
        call.state = CallState.EMITTED
        self.buffered -= call.size
        call.parts = []
        self.emitted += 1

    @property
    def holding(self) -> bool:
        return bool(self.pending)


class PassedCalls:
    """`kimi_tool_stream=passthrough`: the calls the upstream streams itself go out as they come;
    they are only followed, to know how many went out and whether each one's arguments closed."""

    __slots__ = ("_last", "_scanners", "indexes")

    def __init__(self) -> None:
        self._scanners: dict[Any, ArgumentsScanner] = {}
        self._last: Any = None
        self.indexes = 0  # highest upstream index + 1: calls recovered from markup are numbered after

    def see(self, tool_deltas: list[Any]) -> None:
        for tool_delta in tool_deltas:
            if not isinstance(tool_delta, dict):
                continue
            index = tool_delta.get("index")
            if isinstance(index, int) and not isinstance(index, bool):
                key: Any = index
                self.indexes = max(self.indexes, index + 1)
            elif tool_delta.get("id") or self._last is None:
                key = ("index-less", len(self._scanners))
            else:
                key = self._last
            scanner = self._scanners.get(key)
            if scanner is None:
                scanner = self._scanners[key] = ArgumentsScanner()
            function = tool_delta.get("function")
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str):
                scanner.feed(arguments)
            self._last = key

    @property
    def count(self) -> int:
        return len(self._scanners)

    @property
    def any_open(self) -> bool:
        return any(not scanner.closed for scanner in self._scanners.values())
