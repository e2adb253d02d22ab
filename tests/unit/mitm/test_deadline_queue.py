"""Timers of one length behind one loop timer: each fires at its own time unless cancelled, in the
order set; cancelled ones cost no loop timer of their own; a shorter one gets its own."""

import asyncio

from kimiwire.mitm.deadline_queue import DeadlineQueue, QueuedTimer

DELAY = 0.05


def _loop_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


def test_each_timer_fires_at_its_time_in_order_unless_cancelled() -> None:
    fired: list[tuple[int, float]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = DeadlineQueue(loop)
        started = loop.time()
        entries = []
        for n in range(6):
            entries.append(queue.call_later(DELAY, lambda n: fired.append((n, loop.time() - started)), n))
            await asyncio.sleep(DELAY / 10)
        entries[0].cancel()
        entries[3].cancel()
        await asyncio.sleep(DELAY * 2)
        assert all(entry.cancelled() for entry in entries if isinstance(entry, QueuedTimer))
        assert len(queue) == 0 and _loop_timers(loop) == 0

    asyncio.run(scenario())
    assert [n for n, _ in fired] == [1, 2, 4, 5]
    for n, at in fired:
        assert at >= DELAY + n * DELAY / 10 - 1e-3  # never early (the sleeps between them only add)


def test_many_timers_wait_behind_one_loop_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = DeadlineQueue(loop)
        before = _loop_timers(loop)
        entries = [queue.call_later(60.0, lambda _: None, n) for n in range(100)]
        assert _loop_timers(loop) == before + 1
        for entry in entries:
            entry.cancel()
        queue.call_later(60.0, lambda _: None, "next")
        assert len(queue) == 1 and _loop_timers(loop) == before + 1  # the cancelled ones were dropped

    asyncio.run(scenario())


def test_a_shorter_timer_than_those_queued_gets_its_own_and_fires_first() -> None:
    fired: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = DeadlineQueue(loop)
        queue.call_later(DELAY * 2, fired.append, "long")
        short = queue.call_later(DELAY / 2, fired.append, "short")
        assert isinstance(short, asyncio.TimerHandle)
        await asyncio.sleep(DELAY * 3)

    asyncio.run(scenario())
    assert fired == ["short", "long"]


def test_a_callback_that_raises_leaves_the_others_firing() -> None:
    fired: list[int] = []

    def boom(_: int) -> None:
        raise RuntimeError("bug")

    async def scenario() -> None:
        queue = DeadlineQueue(asyncio.get_running_loop())
        queue.call_later(DELAY, boom, 0)
        queue.call_later(DELAY, fired.append, 1)
        await asyncio.sleep(DELAY * 2)

    asyncio.run(scenario())
    assert fired == [1]
