"""Incremental server-sent-events codec, sans-IO: bytes in, events out; events in, bytes out.

Correct for any split of the byte stream: LF, CRLF and CR line ends, multi-line `data:`,
comments, events cut anywhere (also inside a UTF-8 character: lines are split on ASCII line
ends and never decoded here, so a character can only be cut between calls, never lost).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    data: bytes | None  # the `data` lines joined with "\n"; None when the block had none
    raw: bytes  # the block exactly as received, its terminating blank line included
    event: bytes | None = None
    complete: bool = True  # False for a block cut off by the end of the stream


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._block: list[bytes] = []  # raw lines (with their line ends) of the current event
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._has_fields = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a dispatched event."""
        return len(self._buffer) + (sum(len(line) for line in self._block) if self._block else 0)

    def undecoded(self) -> bytes:
        return b"".join(self._block) + self._buffer if self._block else self._buffer

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._block and b"\r" not in buffer:
            return self._feed_lf(buffer)
        return self._feed_lines(buffer)

    def _feed_lf(self, buffer: bytes) -> list[SSEEvent]:
        """The common case, LF line ends only: whole events are cut at blank lines at once."""
        end = buffer.rfind(b"\n\n")
        if end == -1:
            self._buffer = buffer
            return []
        events: list[SSEEvent] = []
        for block in buffer[:end].split(b"\n\n"):
            if not block:
                continue
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SSEEvent(block[6:], block + b"\n\n"))
                continue
            self._buffer = b""
            events += self._feed_lines(block + b"\n\n")
        self._buffer = buffer[end + 2 :].lstrip(b"\n")
        return events

    def _feed_lines(self, buffer: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        position = 0
        size = len(buffer)
        while position < size:
            newline = buffer.find(b"\n", position)
            limit = size if newline == -1 else newline
            carriage = buffer.find(b"\r", position, limit)
            if carriage != -1:
                if carriage + 1 == size:
                    break  # a CR at the very end may be the first half of CRLF
                end = carriage
                after = carriage + 2 if buffer[carriage + 1] == 0x0A else carriage + 1
            elif newline != -1:
                end, after = newline, newline + 1
            else:
                break
            self._line(buffer[position:end], buffer[position:after], events)
            position = after
        self._buffer = buffer[position:]
        return events

    def end(self) -> list[SSEEvent]:
        """The end of the stream: a last line without its line end still counts; a block
        without its blank line is dispatched with `complete=False`."""
        events: list[SSEEvent] = []
        if self._buffer:
            tail, self._buffer = self._buffer, b""
            line = tail[:-1] if tail.endswith(b"\r") else tail
            self._line(line, tail, events)
        if self._block:
            events.append(self._dispatch(b"", complete=False))
        return events

    def _line(self, line: bytes, raw: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._block:
                events.append(self._dispatch(raw))
            return
        self._block.append(raw)
        if line[0] == 0x3A:  # ":" a comment
            return
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        self._has_fields = True

    def _dispatch(self, terminator: bytes, complete: bool = True) -> SSEEvent:
        data = b"\n".join(self._data) if self._data else None
        event = SSEEvent(data, b"".join(self._block) + terminator, self._event, complete)
        self._block, self._data, self._event, self._has_fields = [], [], None, False
        return event


def encode_data(data: bytes) -> bytes:
    """One event carrying `data` (split over several `data:` lines where it has line ends)."""
    if b"\n" not in data and b"\r" not in data:
        return b"data: " + data + b"\n\n"
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
