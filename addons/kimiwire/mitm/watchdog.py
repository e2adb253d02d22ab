"""One timer per repaired stream: it fires at the stream's next deadline (by the stream's own
limits) and asks the adapter to end the stream then. A timer, not a task: most streams end
before any deadline, and a task per stream (plus one per wait) cost more CPU than the stream's
own bookkeeping. No mitmproxy import; the ending itself is a callback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from kimiwire.mitm.stream_callable import ProxyEnd, RepairingStream
from kimiwire.wire.stream_endings import next_deadline, next_keepalive

# The stream's lane passes events without timing them (RepairingStream.lane_events counts them):
# while the idle deadline is the next one, the watchdog looks at the count this often (a fraction
# of the idle timeout). Events seen since the last look count as coming at the look, the latest
# they can have come, so a stream is never ended early and at most this fraction late.
IDLE_LOOKS = 8


class StreamWatchdog:
    def __init__(
        self,
        stream: RepairingStream,
        end: Callable[[ProxyEnd], Coroutine[Any, Any, Any]],
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        clock: Callable[[], float] = time.monotonic,
        keepalive: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    ) -> None:
        self.stream = stream
        self.end = end
        self.keepalive = keepalive  # sends the client a comment while it waits for an answer
        self.spawn = spawn  # runs the ending as a task of the flow
        self.clock = clock
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer fires (by `clock`)
        self._stopped = False
        self._lane_seen = 0  # stream.lane_events() at the last look
        stream.on_change = self.plan  # a deadline may have moved earlier

    @property
    def waiting(self) -> bool:
        return self._timer is not None

    def _fired(self) -> None:
        self._timer = None
        self.plan()

    def plan(self) -> None:
        """Set the timer for the stream's next deadline, or end the stream when it has passed. A
        timer that fires no later than the new deadline is kept: it plans again when it fires (an
        early wake-up is cheaper than a cancelled timer and a new one, which most streams would
        otherwise pay at every change: first event, finish_reason, [DONE])."""
        stream = self.stream
        if self._stopped or stream.ended:
            self._cancel()
            return
        now = self.clock()
        passed = stream.lane_events()
        if passed != self._lane_seen:
            self._lane_seen = passed
            times = stream.times
            times.last_event_at = max(times.last_event_at, now)
        planned = next_deadline(stream.times, stream.limits)
        if planned is not None and now >= planned[0]:
            self._cancel()
            self._stopped = True
            self.spawn(self.end(ProxyEnd(planned[1])))
            return
        comment_due = (
            next_keepalive(stream.times, stream.limits, stream.waiting) if self.keepalive is not None else None
        )
        if comment_due is not None and now >= comment_due:
            stream.times.keepalive_at = now
            assert self.keepalive is not None
            self.spawn(self.keepalive())
            comment_due = now + stream.limits.keepalive
        if planned is None and comment_due is None:
            self._cancel()
            return
        deadline = planned[0] if planned is not None else comment_due
        assert deadline is not None
        # Later events only move the deadline later: the timer re-plans when it fires.
        if planned is not None and planned[1] == "idle":
            span = planned[0] - stream.times.last_event_at  # the idle wait in use (tool or plain)
            deadline = min(deadline, now + span / IDLE_LOOKS)
        elif not stream.times.events_seen and stream.limits.idle_timeout > 0:
            # No event yet: wake up no later than the first look after an event would, so the
            # first event (most often right after the headers) leaves this timer as it is.
            deadline = min(deadline, now + stream.limits.idle_timeout / IDLE_LOOKS)
        if comment_due is not None:
            deadline = min(deadline, comment_due)
        if self._timer is not None:
            if self._due <= deadline:
                return
            self._timer.cancel()
        delay = max(0.0, deadline - now)
        self._due = now + delay
        self._timer = self._loop.call_later(delay, self._fired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        self._stopped = True
        self._cancel()
