"""Timers of one length for many flows (the first-byte timeout) behind one loop timer.

A loop timer per flow costs a handle, a heap entry the loop compares in Python, and, once cancelled
(most are: response headers come within milliseconds), the entry's removal later. Timers of one
length end in the order they were set, so here they queue: one loop timer waits for the earliest
entry still pending, and an entry cancelled in the meantime is dropped when it reaches the head.
While flows keep coming the loop timer fires about once per timer length, not once per flow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("kimiwire")

# The loop runs a timer this close to its time (asyncio's own rule), so one is not re-armed for a
# deadline a clock tick away.
_RESOLUTION = time.get_clock_info("monotonic").resolution


class QueuedTimer:
    """One entry: `callback(argument)` at `when` (loop time) unless cancelled first."""

    __slots__ = ("argument", "callback", "when")

    def __init__(self, when: float, callback: Callable[[Any], None], argument: Any) -> None:
        self.when = when
        self.callback: Callable[[Any], None] | None = callback
        self.argument = argument

    def cancel(self) -> None:
        self.callback = self.argument = None  # (the argument, often a flow's state, is not kept either)

    def cancelled(self) -> bool:
        return self.callback is None


class DeadlineQueue:
    """`call_later` for timers of (mostly) one length on one loop; a shorter one than those queued
    (the length changed with the options) gets a loop timer of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queue: deque[QueuedTimer] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def call_later(
        self, delay: float, callback: Callable[[Any], None], argument: Any
    ) -> QueuedTimer | asyncio.TimerHandle:
        when = self.loop.time() + delay
        queue = self._queue
        while queue and queue[0].callback is None:  # cancelled: dropped as they reach the head
            queue.popleft()
        if queue and when < queue[-1].when:
            return self.loop.call_at(when, callback, argument)
        entry = QueuedTimer(when, callback, argument)
        queue.append(entry)
        if self._timer is None:
            self._timer = self.loop.call_at(queue[0].when, self._fire)
        return entry

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        end = self.loop.time() + _RESOLUTION
        while queue:
            entry = queue[0]
            callback, argument = entry.callback, entry.argument
            if callback is not None:
                if entry.when > end:
                    break
                entry.cancel()
                try:
                    callback(argument)
                except Exception:  # (the callbacks guard themselves: this is the last line)
                    logger.exception("kimiwire: a timer's callback failed")
            queue.popleft()
        if queue and self._timer is None:  # (a callback may have queued a timer and armed it)
            self._timer = self.loop.call_at(queue[0].when, self._fire)
