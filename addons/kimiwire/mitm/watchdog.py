"""One timer per repaired stream: it fires at the stream's next deadline (by the stream's own
limits) and asks the adapter to end the stream then. A timer, not a task: most streams end
before any deadline, and a task per stream (plus one per wait) cost more CPU than the stream's
own bookkeeping. No mitmproxy import; the ending itself is a callback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from kimiwire.mitm.stream_callable import ProxyEnd, RepairingStream
from kimiwire.wire.stream_endings import next_deadline


class StreamWatchdog:
    def __init__(
        self,
        stream: RepairingStream,
        end: Callable[[ProxyEnd], Awaitable[Any]],
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.end = end
        self.spawn = spawn  # runs the ending as a task of the flow
        self.clock = clock
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        stream.on_change = self.plan  # a deadline may have moved earlier

    @property
    def waiting(self) -> bool:
        return self._timer is not None

    def plan(self) -> None:
        """Set the timer for the stream's next deadline, or end the stream when it has passed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stopped or self.stream.ended:
            return
        planned = next_deadline(self.stream.times, self.stream.limits)
        if planned is None:
            return
        now = self.clock()
        if now >= planned[0]:
            self._stopped = True
            self.spawn(self.end(ProxyEnd(planned[1])))
            return
        # Later events only move the deadline later: the timer re-plans when it fires.
        self._timer = self._loop.call_later(planned[0] - now, self.plan)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
