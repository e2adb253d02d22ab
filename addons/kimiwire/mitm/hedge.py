"""A hedged attempt (`kimi_hedge_after`, opt-in): when a streamed turn's first event is late by
that many seconds, a second attempt starts beside the first, its events held. Whichever shows
content first (a text, reasoning or tool-call delta) answers; the other is cancelled (the hedge's
upstream request is closed; the first attempt is ended as by its first-event timeout, or its
upstream closed when it sent no headers). At most one hedge per turn. The technique is the
tail-tolerant request of "The Tail at Scale" (Dean and Barroso, CACM 2013); its cost is one extra
prefill.

The hedge answers through the retry paths: when the first attempt ends without an answer (the
hedge won, or it stalled by itself), the retry adopts the hedge as its first extra attempt: the
held events go out, then the rest as it comes. The first attempt must have sent the client no
event yet (only comments), so the hedge's stream is what a first-time success would send; once
the first attempt sends an event, the hedge is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from mitmproxy import http

from kimiwire.mitm.flow_record import FlowRecord
from kimiwire.mitm.retry import Attempt, Sink, Success
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.retry.continuation import Continuation

logger = logging.getLogger("kimiwire")

_LOOK_EVERY = 0.1  # seconds between looks at the first attempt (has it sent an event?)


class HedgeLost(Exception):
    """The first attempt showed an event first: the hedge stops."""


def shows_content(event: bytes) -> bool:
    """A chunk with a text, reasoning or tool-call delta (not a role chunk, not a comment)."""
    if not event.startswith(b"data: {"):
        return False
    try:
        chunk = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return False
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        if delta.get("content") or delta.get("tool_calls") or any(delta.get(key) for key in REASONING_KEYS):
            return True
    return False


class HoldingSink(Sink):
    """The hedge's sink: holds its events until the hedge is adopted, then sends them and the rest
    as any live sink does. The first content it holds decides the race (`on_content`)."""

    def __init__(self, flow: http.HTTPFlow, on_content: Callable[[], bool]) -> None:
        super().__init__(flow, live=False)
        self.on_content = on_content  # True: the hedge won; False: it lost
        self.held: list[bytes] = []
        self.showed_content = False
        self._lock = asyncio.Lock()

    async def send(self, events: list[bytes]) -> None:
        async with self._lock:
            if self.live:
                await super().send(events)
                return
            if not self.showed_content and any(shows_content(e) for e in events):
                self.showed_content = True
                if not self.on_content():
                    raise HedgeLost
            self.held += [e for e in events if e]

    async def go_live(self, raw: bool, delivered: bytearray) -> None:
        async with self._lock:
            self.live, self.raw, self.delivered = True, raw, delivered
            held, self.held = self.held, []
            await super().send(held)


class HedgeRace:
    """One flow's hedge: started by `start`, cancelled by `cancel`, adopted by a retry (`adopt`)."""

    def __init__(
        self,
        flow: http.HTTPFlow,
        first_sent_event: Callable[[], bool],
        end_first: Callable[[], None],
        counts: Any,
    ) -> None:
        self.flow = flow
        self.first_sent_event = first_sent_event  # has the first attempt sent the client an event?
        self.end_first = end_first  # end the first attempt (the hedge won)
        self.counts = counts
        self.won = False
        self.adopted = False
        self.continuation = Continuation({}, False)
        self.sink = HoldingSink(flow, self._content_came)
        self.success: list[Success] = []
        self.attempt: Attempt | None = None
        self.task: asyncio.Task[Any] | None = None
        self._look: asyncio.TimerHandle | None = None

    def start(self, attempt: Attempt, work: Callable[[HoldingSink], Coroutine[Any, Any, Any]]) -> None:
        self.attempt = attempt
        self.task = asyncio.get_running_loop().create_task(work(self.sink))
        self.task.add_done_callback(self._finished)
        self.counts["retry.hedges"] += 1
        self._plan_look()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and isinstance(task.exception(), HedgeLost):
            self.cancel("the first attempt answered first")

    def _plan_look(self) -> None:
        self._look = asyncio.get_running_loop().call_later(_LOOK_EVERY, self._look_at_first)

    def _look_at_first(self) -> None:
        self._look = None
        if self.won or self.adopted or self.task is None or self.task.done():
            return
        if self.first_sent_event():
            self.cancel("the first attempt answered first")
            return
        self._plan_look()

    def _content_came(self) -> bool:
        if self.adopted:
            return True
        if self.first_sent_event():
            return False
        self.won = True
        self.counts["retry.hedge_won"] += 1
        logger.info("kimiwire: %s %s: the hedge answered first", self.flow.request.method, self.flow.request.path)
        self.end_first()
        return True

    def cancel(self, why: str) -> None:
        if self._look is not None:
            self._look.cancel()
            self._look = None
        if self.adopted or self.task is None:
            return
        if not self.task.done():
            self.task.cancel()
        elif self.task.cancelled() or not isinstance(self.task.exception(), HedgeLost):
            return
        self.counts["retry.hedge_cancelled"] += 1
        if self.attempt is not None:
            self.attempt.outcome, self.attempt.detail = "cancelled", why
            FlowRecord.of(self.flow).set_hedge(self.attempt.as_dict())

    def adopt(self) -> tuple[Attempt, asyncio.Task[Any]] | None:
        """The hedge as a retry's first extra attempt, or None when there is none to adopt."""
        task = self.task
        if task is None or self.attempt is None or self.first_sent_event():
            return None
        if task.done() and (task.cancelled() or task.exception() is not None):
            return None
        self.adopted = True
        if self._look is not None:
            self._look.cancel()
            self._look = None
        return self.attempt, task
