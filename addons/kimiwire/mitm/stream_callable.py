"""The `flow.response.stream` callable around a StreamRepairer, with mitmproxy's rules kept:
never an empty chunk mid-stream (it would end a chunked body), one chunk per upstream read, and
an exception turns the rest of the stream into passthrough instead of dropping data. It also
keeps the times the watchdog needs (last upstream event, [DONE] sent, every choice finished).

No mitmproxy import: it only needs to be a callable `bytes -> list[bytes]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, overload

from kimiwire.mitm.flow_endings import FlowEnding
from kimiwire.wire.codecs.content_decoding import BodyDecoder, DecodingError
from kimiwire.wire.openai_errors import error_event
from kimiwire.wire.response.fast_path import PLAIN_ONLY
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.turn_pipeline import TurnPipeline
from kimiwire.wire.retry.turn_gate import TurnGate, TurnVerdict
from kimiwire.wire.stream_endings import EndingLimits, StreamTimes

logger = logging.getLogger("kimiwire")

IDLE_MESSAGE = "kimiwire: the upstream sent no event for {seconds:g} s; the stream was ended by the proxy"
FIRST_EVENT_MESSAGE = (
    "kimiwire: the upstream sent headers but no event within {seconds:g} s; the stream was ended by the proxy"
)

SHUTDOWN_MESSAGE = "kimiwire: the proxy is shutting down; the stream was ended before the upstream finished it"


class ProxyEnd(StrEnum):
    """Why the proxy ends a stream itself (the deadlines of wire/stream_endings.py)."""

    DONE = "done"
    FINISHED = "finished"
    IDLE = "idle"
    FIRST_EVENT = "first_event"
    SHUTDOWN = "shutdown"  # the proxy is stopping (SIGTERM, SIGINT)

    @property
    def ending(self) -> FlowEnding:
        """How the flow's record names this ending."""
        return _ENDINGS[self]


_ENDINGS = {
    ProxyEnd.DONE: FlowEnding.PROXY_DONE,
    ProxyEnd.FINISHED: FlowEnding.PROXY_FINISHED,
    ProxyEnd.IDLE: FlowEnding.IDLE_TIMEOUT,
    ProxyEnd.FIRST_EVENT: FlowEnding.FIRST_EVENT_TIMEOUT,
    ProxyEnd.SHUTDOWN: FlowEnding.SHUTDOWN,
}


class JoinedReads:
    """A bytearray attribute (`upstream`, `delivered`) that the steady branch grows by appending
    each read to a list (`_NAME_reads`): joined onto the bytearray (`_NAME`) when it is read, so
    no bytearray is regrown per event. The lane's reads are filed first (`settle`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.buffer = f"_{name}"
        self.reads = f"_{name}_reads"

    @overload
    def __get__(self, stream: None, owner: type | None = None) -> JoinedReads: ...
    @overload
    def __get__(self, stream: RepairingStream, owner: type | None = None) -> bytearray: ...
    def __get__(self, stream: RepairingStream | None, owner: type | None = None) -> JoinedReads | bytearray:
        if stream is None:
            return self
        stream.settle()
        buffer: bytearray = getattr(stream, self.buffer)
        reads: list[bytes] = getattr(stream, self.reads)
        if reads:
            buffer += b"".join(reads)
            reads.clear()
        return buffer

    def __set__(self, stream: RepairingStream, value: bytearray) -> None:
        stream.settle()
        getattr(stream, self.reads).clear()
        setattr(stream, self.buffer, value)

    def bytes_of(self, stream: RepairingStream) -> bytes:
        """The attribute's bytes with one copy at most: the reads are joined once and kept as
        that one piece (the bytearray would cost three copies: join, extend, bytes())."""
        stream.settle()
        if getattr(stream, self.buffer):  # bytes were added through the bytearray: join there
            return bytes(self.__get__(stream))
        reads: list[bytes] = getattr(stream, self.reads)
        if not reads:
            return b""
        whole = reads[0] if len(reads) == 1 and type(reads[0]) is bytes else b"".join(reads)
        reads[:] = [whole]
        return whole


class RepairingStream:
    """How the stream ends is decided here: `end_by_proxy(reason)` just before mitmproxy calls
    `stream(b"")` for the proxy's own end (then `_end` flushes with the closing events that
    reason calls for), `close_after_upstream_failure` when the upstream failed mid-stream, and
    `ending` says which of them happened (or `FlowEnding.NATURAL`)."""

    upstream = JoinedReads()  # every byte the upstream sent, for the capture and replays
    delivered = JoinedReads()  # every byte sent to the client

    def __init__(
        self,
        repairer: StreamRepairer,
        on_error: Callable[[BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        limits: EndingLimits | None = None,
        gate: TurnGate | None = None,
        retry_stall: bool = False,
    ) -> None:
        self.repairer = repairer
        self._plain_read = repairer.plain_read  # (bound once: the steady branch calls it per event)
        self._fragment_read = repairer.fragment_read
        # Retries: the gate holds a turn's ending until it proves to have an answer;
        # a turn that fails is left unended (`failed_turn`) for the `response` hook to retry.
        self.gate = gate
        self.pipeline = TurnPipeline(repairer, gate)  # repair, then the gate
        self.retry_stall = retry_stall
        self.failed_turn: TurnVerdict | None = None
        self.limits = limits or EndingLimits()
        self.on_error = on_error
        self.on_change: Callable[[], None] | None = None  # wakes the watchdog
        self.clock = clock
        now = clock()
        self.times = StreamTimes(started_at=now, last_event_at=now)
        self._upstream = bytearray()
        self._upstream_reads: list[bytes] = []
        self._delivered = bytearray()
        self._delivered_reads: list[bytes] = []
        self.calls = 0  # reads the full branch took (the steady branch comes after one)
        self.ended = False
        self.failed = False
        self.end_reason: ProxyEnd | None = None  # set when the proxy ends the stream
        self.first_byte_at: float | None = None  # wall-clock times, for the capture
        self.last_byte_at: float | None = None
        self.error_event: bytes | None = None  # the error event the stream was ended with, if any
        # Steady state (set after each read that took the full path): the stream is flowing, the
        # turn is proven, nothing is pending; a read of plain text events then only needs
        # `repairer.plain_read` and the bookkeeping below.
        self._steady = False
        # Within the steady state, the repairer's usual event shape (`StreamRepairer.steady_lane`):
        # such an event is checked and passed here, without a call into the repairer.
        self._lane: tuple[bytes, bytes, int, int] | None = None
        self._lane_reads: list[bytes] = []  # passed by the lane, not yet settled
        self._lane_settled = 0  # passed by the lane and settled
        self._fragments = False  # held calls' argument fragments may take the fast path (`_full_read`)

    def __call__(self, data: bytes) -> list[bytes]:
        # Called once per upstream chunk, usually one event: the lane and the steady branch are on
        # most events' path, kept inline (no call).
        lane = self._lane
        if lane is not None:
            head, end, start, end_size = lane
            closing = len(data) - end_size
            if closing >= start and data.startswith(head) and data.endswith(end):
                text = data[start:closing]
                if text.translate(PLAIN_ONLY) is text:
                    # Filed and counted in bulk (`settle`), not timed: the watchdog reads the count.
                    self._lane_reads.append(data)
                    return [data]
        if self._lane_reads:
            self.settle()
        if not self._steady:
            return self._full_read(data)
        if not self._plain_read(data):  # (0 for b"", the end)
            if self._fragments and (held := self._fragment_read(data)) is not None:
                return self._held_fragments(data, held)
            return self._full_read(data)
        self._lane = self.repairer.steady_lane()  # (the read may have changed the template)
        self._upstream_reads.append(data)
        self._delivered_reads.append(data)
        self.times.last_event_at = self.clock()
        return [data]

    def _held_fragments(self, data: bytes, out: list[bytes]) -> list[bytes]:
        """A read of argument fragments the repairer's fast path added to their held calls (`out`:
        what goes out for them, usually nothing): the read is filed and timed as the full branch
        would; and when a fragment may have closed the last call's arguments, the tool section's
        state is asked again."""
        self._upstream_reads.append(data)
        times = self.times
        times.last_event_at = self.clock()
        fragments = self.repairer.fragments
        if fragments.may_close:
            fragments.may_close = False
            if times.tool_section_open is not (section := self.repairer.tool_section_open):
                times.tool_section_open = section
                self._wake()
        return self._deliver(out)

    def settle(self) -> None:
        """The lane's reads since the last call, filed as the upstream's and the client's bytes
        and counted as the repairer's events (the lane does neither per event). Called before
        anything else reads or adds to them; the record calls it before taking the counts."""
        reads = self._lane_reads
        if reads:
            self._lane_settled += len(reads)
            self._upstream_reads += reads
            self._delivered_reads += reads
            repairer = self.repairer
            repairer.events_in += len(reads)
            repairer.data_events_in += len(reads)
            reads.clear()

    def lane_events(self) -> int:
        """Events the lane passed so far. It does not read the clock for them (a cold clock read
        per event costs more than the count): the watchdog looks at this count instead."""
        return self._lane_settled + len(self._lane_reads)

    def _full_read(self, data: bytes) -> list[bytes]:
        """A read through the repairer's full path; then whether the stream is steady now."""
        out = self._read(data)
        gate = self.gate
        times = self.times
        self._steady = (
            not self.failed
            and not self.ended
            and times.events_seen
            and times.done_at is None
            and times.finished_at is None
            and (gate is None or gate.proven)
        )
        self._lane = self.repairer.steady_lane() if self._steady else None
        # Whether argument fragments may take the repairer's fast path: its answer changes only
        # on a read the full branch takes.
        self._fragments = self.repairer.fragments.ready
        return out

    def upstream_bytes(self) -> bytes:
        """Every byte the upstream sent, as bytes."""
        self.settle()
        reads = self._upstream_reads
        if len(reads) > 1 and not self._upstream and not self._delivered and self._delivered_reads == reads:
            # The client got the same pieces (the steady branch appends one object to both): one
            # join serves both.
            whole = b"".join(reads)
            reads[:] = [whole]
            self._delivered_reads[:] = [whole]
            return whole
        return RepairingStream.upstream.bytes_of(self)

    def delivered_bytes(self) -> bytes:
        """Every byte sent to the client, as bytes."""
        return RepairingStream.delivered.bytes_of(self)

    def _read(self, data: bytes) -> list[bytes]:
        self.calls += 1
        repairer = self.repairer
        if data:
            if self.first_byte_at is None:
                self.first_byte_at = time.time()
            self._upstream_reads.append(data)
        else:
            self.ended = True
            self.last_byte_at = time.time()
        if self.failed:
            if data:
                self._passthrough_activity()
            return self._deliver([data] if data else [])
        events_before = repairer.data_events_in
        pipeline = self.pipeline
        # An exception in a stage costs a repair, never data (TurnPipeline): the rest passes through.
        out = pipeline.feed(data) if data else self._end()
        if pipeline.failed and not self.failed:
            self.failed = True
            if self.on_error is not None and pipeline.failure is not None:
                self.on_error(pipeline.failure)
        times = self.times
        if repairer.bypass and data:
            self._passthrough_activity()
        elif repairer.data_events_in != events_before:
            # Later events only move the idle deadline later: the watchdog notices when it wakes
            # up, so it is woken only when a deadline may move earlier.
            times.last_event_at = self.clock()
            if not times.events_seen:
                times.events_seen = True
                self._wake()
        if times.tool_section_open is not (section := repairer.tool_section_open):
            times.tool_section_open = section  # its own idle deadline and keep-alive comments
            self._wake()
        if times.done_at is None and repairer.done:
            times.done_at = self.clock()
            self._wake()
        if times.finished_at is None and repairer.all_finished:
            times.finished_at = self.clock()
            self._wake()
        if len(out) == 1 and out[0]:
            self._delivered_reads.append(out[0])
            return out
        return self._deliver(out)

    def _passthrough_activity(self) -> None:
        """Passed through undecoded (past the buffer limit, after a repair failed): any bytes count
        as upstream activity, or the idle timeout would cut a stream that is still flowing."""
        times = self.times
        times.last_event_at = self.clock()
        if not times.events_seen:
            times.events_seen = True
            self._wake()

    def _wake(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def end_by_proxy(self, reason: ProxyEnd) -> None:
        """The proxy ends this stream now: the coming `stream(b"")` flushes for this reason."""
        self.end_reason = reason

    @property
    def waiting(self) -> bool:
        """The client has no answer yet (no event, or a turn not proven by content or a call) and
        what it was sent ends at an event boundary: a comment can go in now."""
        if self.ended or self.failed or self.repairer.bypass:
            return False
        gate = self.gate
        return not self.times.events_seen or (gate is not None and not gate.proven)

    @property
    def ending(self) -> FlowEnding:
        return FlowEnding.NATURAL if self.end_reason is None else self.end_reason.ending

    def _end(self) -> list[bytes]:
        if self.end_reason is ProxyEnd.SHUTDOWN:  # never a retry: the client gets what was held and why
            return self.end_with_error(error_event(SHUTDOWN_MESSAGE, "proxy_shutdown", "proxy_shutdown"))
        pipeline = self.pipeline
        timed_out = self.end_reason in (ProxyEnd.IDLE, ProxyEnd.FIRST_EVENT)
        if timed_out and self.retry_stall and pipeline.stalled_unanswered(self.upstream_bytes):
            self.failed_turn = TurnVerdict("stall", f"no answer before the {self.end_reason} timeout")
            return []
        if not pipeline.proven and not timed_out:
            out = pipeline.end(drop_partial=self.end_reason is not None)
            self.failed_turn = pipeline.verdict
            return out
        if self.end_reason is ProxyEnd.IDLE:
            message = IDLE_MESSAGE.format(seconds=self.limits.idle_timeout)
            return self.end_with_error(error_event(message, "upstream_timeout", "upstream_idle_timeout"))
        if self.end_reason is ProxyEnd.FIRST_EVENT:
            message = FIRST_EVENT_MESSAGE.format(seconds=self.limits.first_event_timeout)
            return self.end_with_error(error_event(message, "upstream_timeout", "upstream_first_event_timeout"))
        return pipeline.end(drop_partial=self.end_reason is not None)

    def end_with_error(self, event: bytes) -> list[bytes]:
        self.error_event = event
        return self.pipeline.end_with_error(event)

    def close_after_upstream_failure(self, message: str) -> bytes:
        """The upstream failed mid-stream: the events that end the client's stream cleanly
        (what was held, an error event, [DONE]). They count as delivered once `tail_sent` says so."""
        self.ended = True
        return b"".join(self.end_with_error(error_event(message, "upstream_error", "upstream_disconnected")))

    def tail_sent(self, tail: bytes) -> None:
        """The closing events of `close_after_upstream_failure` were written to the client."""
        self.delivered += tail

    def _deliver(self, out: list[bytes]) -> list[bytes]:
        joined = b"".join(out)
        if not joined:
            return []
        self.settle()  # after what the lane passed (an undecodable body's error comes here directly)
        self._delivered_reads.append(joined)
        return [joined]


class DecodingStream(RepairingStream):
    """A RepairingStream in front of an upstream body with a content-encoding (gzip, deflate, br,
    zstd): each chunk is decoded first (bounded), so the stream is repaired, timed and captured
    like any other; `upstream` holds the decoded body. Data that cannot be decoded ends the
    client's stream with an error event (what was held, the error, [DONE])."""

    def __init__(self, repairer: StreamRepairer, decoder: BodyDecoder, **kwargs: Any) -> None:
        super().__init__(repairer, **kwargs)
        self.decoder = decoder
        self.undecodable = False

    def __call__(self, data: bytes) -> list[bytes]:
        if self.undecodable:
            if not data:
                self.ended = True
                self.last_byte_at = time.time()
            return []
        try:
            if data:
                decoded = self.decoder.feed(data)
                if not decoded:
                    if self.first_byte_at is None:
                        self.first_byte_at = time.time()
                    return []
                return super().__call__(decoded)
            tail = self.decoder.end()
        except DecodingError as exc:
            return self._undecodable(exc)
        out = super().__call__(tail) if tail else []
        return out + super().__call__(b"")

    def _undecodable(self, exc: DecodingError) -> list[bytes]:
        self.undecodable = True
        message = f"kimiwire: the upstream's {self.decoder.encoding} stream could not be decoded: {exc}"
        out = self.end_with_error(error_event(message, "upstream_error", "upstream_undecodable"))
        if self.times.done_at is None:
            self.times.done_at = self.clock()  # the client's body ends after the grace, as after [DONE]
            self._wake()
        return self._deliver(out)
