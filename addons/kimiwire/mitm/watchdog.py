"""One asyncio task per repaired stream: sleeps until the stream's next deadline (by the stream's
own limits) and asks the adapter to end the stream then. No mitmproxy import; the ending itself
is a callback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kimiwire.mitm.stream_callable import ProxyEnd, RepairingStream
from kimiwire.wire.stream_endings import next_deadline


class StreamWatchdog:
    def __init__(
        self,
        stream: RepairingStream,
        end: Callable[[ProxyEnd], Awaitable[Any]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.end = end
        self.clock = clock
        self._wake = asyncio.Event()
        stream.on_change = self._wake.set

    async def run(self) -> None:
        while not self.stream.ended:
            planned = next_deadline(self.stream.times, self.stream.limits)
            now = self.clock()
            if planned is not None and now >= planned[0]:
                await self.end(ProxyEnd(planned[1]))
                return
            self._wake.clear()
            timeout = None if planned is None else planned[0] - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
