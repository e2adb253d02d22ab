"""The stream watchdog's idle end when the steady lane passes events without timing them: never
earlier than the idle timeout after the last event, at most an eighth of it later."""

import asyncio
import itertools
from dataclasses import dataclass, field

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.mitm.stream_callable import ProxyEnd, RepairingStream
from kimiwire.mitm.watchdog import IDLE_LOOKS, StreamWatchdog
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy
from kimiwire.wire.stream_endings import EndingLimits

IDLE = 8.0
LIMITS = EndingLimits(done_grace=1.0, idle_timeout=IDLE, first_byte_timeout=600.0)
DEFAULT_LIMITS = EndingLimits()
BASE = {"id": "chatcmpl-w", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2-thinking"}


def event(delta: dict) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return b"data: " + orjson.dumps({**BASE, "choices": [choice]}) + b"\n\n"


@dataclass
class FakeTimers:
    """The loop's call_later on a clock the test moves."""

    now: float = 0.0
    planned: list = field(default_factory=list)  # [fire_at, callback, cancelled]

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback) -> "FakeHandle":
        entry = [self.now + delay, callback, False]
        self.planned.append(entry)
        return FakeHandle(entry)

    def due(self, until: float) -> list:
        due = sorted((e for e in self.planned if not e[2] and e[0] <= until), key=lambda e: e[0])
        if due:
            due[0][2] = True  # it fires now (the caller calls it)
        return due

    async def fire_until(self, ended: list) -> None:
        """Move the clock to each next timer and fire it until `ended` holds something."""
        while not ended:
            pending = self.due(float("inf"))
            assert pending, "the watchdog stopped watching"
            self.now = pending[0][0]
            pending[0][1]()
            await asyncio.sleep(0)


@dataclass
class FakeHandle:
    entry: list

    def cancel(self) -> None:
        self.entry[2] = True


def run(event_times: list[float]) -> tuple[float, int]:
    """Events at `event_times` (the first three open the lane), then silence: when the watchdog
    ends the stream, and how many of the later events the lane passed."""
    timers = FakeTimers()
    ended: list[float] = []

    async def scenario() -> None:
        repairer = StreamRepairer(RequestFacts(0, {}, True, True), Policy.build(Flavor.SELFHOSTED))
        stream = RepairingStream(repairer, clock=timers.clock, limits=LIMITS)

        async def end(reason: ProxyEnd) -> None:
            assert reason is ProxyEnd.IDLE
            ended.append(timers.now)

        dog = StreamWatchdog(stream, end, lambda coroutine: asyncio.ensure_future(coroutine), clock=timers.clock)
        dog._loop = timers  # type: ignore[assignment]
        dog.plan()
        opening = [event({"role": "assistant", "content": ""}), event({"content": "Sure."}), event({"content": "x"})]
        texts = [*opening, *(event({"content": f" word {n}"}) for n in range(len(event_times)))]
        for at, data in zip(event_times, texts, strict=False):
            while due := timers.due(at):  # the looks before this event, in time order
                timers.now = due[0][0]
                due[0][1]()
            timers.now = at
            stream(data)
        await timers.fire_until(ended)
        stream.settle()
        passed.append(stream.lane_events())

    passed: list[int] = []
    asyncio.run(scenario())
    return ended[0], passed[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 2.5 * IDLE), min_size=3, max_size=40))
def test_the_idle_end_is_never_early_and_at_most_an_eighth_late(gaps):
    times = []
    now = 0.0
    for gap in gaps:
        now += min(gap, IDLE * 0.99)  # every gap below the idle timeout: the stream is alive until the last event
        times.append(now)
    end, _ = run(times)
    last = times[-1]
    assert last + IDLE <= end <= last + IDLE + IDLE / IDLE_LOOKS + 1e-9


def test_the_lane_passes_events_without_reading_the_clock():
    reads = []
    repairer = StreamRepairer(RequestFacts(0, {}, True, True), Policy.build(Flavor.SELFHOSTED))
    stream = RepairingStream(repairer, clock=lambda: reads.append(1) or float(len(reads)), limits=LIMITS)
    for data in (event({"role": "assistant", "content": ""}), event({"content": "Sure."}), event({"content": "x"})):
        stream(data)
    before = len(reads)
    lane_before = stream.lane_events()  # ("x" already: "Sure." taught the lane)
    words = [event({"content": f" word {n}"}) for n in range(20)]
    assert [stream(data) for data in words] == [[data] for data in words]
    assert len(reads) == before  # counted, not timed
    assert stream.lane_events() == lane_before + 20
    stream(event({"content": "caf\u00e9"}))  # the steady branch times its event (and settles the lane's)
    assert len(reads) == before + 1 and stream.lane_events() == lane_before + 20


# -- while a tool call may be under way unseen (vllm PR #50627: the K3 parser holds a call) -----

TOOL_LIMITS = EndingLimits(done_grace=1.0, idle_timeout=IDLE, first_byte_timeout=600.0, tool_idle_timeout=4 * IDLE)
TOOLS = {"read": {"type": "object"}}


async def _note(comments: list[float], now: float) -> None:
    comments.append(now)


def held_call(facts: RequestFacts, opening: list[bytes]) -> tuple[float, list[float]]:
    """The opening events at t=0, then silence: when the stream is ended, and when comments went out."""
    timers = FakeTimers()
    ended: list[float] = []
    comments: list[float] = []

    async def scenario() -> None:
        repairer = StreamRepairer(facts, Policy.build(Flavor.SELFHOSTED))
        stream = RepairingStream(repairer, clock=timers.clock, limits=TOOL_LIMITS)

        async def end(reason: ProxyEnd) -> None:
            ended.append(timers.now)

        dog = StreamWatchdog(
            stream,
            end,
            lambda coroutine: asyncio.ensure_future(coroutine),
            clock=timers.clock,
            keepalive=lambda: _note(comments, timers.now),
        )
        dog._loop = timers  # type: ignore[assignment]
        dog.plan()
        for data in opening:
            stream(data)
        await timers.fire_until(ended)

    asyncio.run(scenario())
    return ended[0], comments


def test_a_k3_request_with_tools_gets_the_tool_idle_deadline_and_comments():
    opening = [event({"role": "assistant", "content": ""}), event({"content": "Writing the file."})]
    ended_at, comments = held_call(RequestFacts(0, TOOLS, True, True, k3_model=True), opening)
    assert 4 * IDLE <= ended_at <= 4 * IDLE * (1 + 1 / IDLE_LOOKS)
    keepalive = TOOL_LIMITS.keepalive
    assert comments and comments[0] == keepalive
    assert all(b - a == keepalive for a, b in itertools.pairwise(comments))


def test_a_tool_section_held_as_markup_gets_the_tool_idle_deadline():
    section = "<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{"
    opening = [event({"role": "assistant", "content": ""}), event({"content": "ok " + section})]
    ended_at, comments = held_call(RequestFacts(0, TOOLS, True, True), opening)
    assert ended_at >= 4 * IDLE and comments


def test_plain_text_keeps_the_ordinary_idle_deadline_and_no_comments():
    opening = [event({"role": "assistant", "content": ""}), event({"content": "Hello."})]
    ended_at, comments = held_call(RequestFacts(0, TOOLS, True, True), opening)
    assert IDLE <= ended_at <= IDLE * (1 + 1 / IDLE_LOOKS) and not comments


def test_a_plain_stream_sets_a_timer_at_its_start_and_its_finish_only():
    """The first event and [DONE] leave the timer that fires earlier as it is (it plans again when it
    fires); a stream whose body stays open after [DONE] is still ended `done_grace` after it."""
    timers = FakeTimers()
    ended: list[tuple[float, ProxyEnd]] = []
    assert DEFAULT_LIMITS.done_grace < DEFAULT_LIMITS.idle_timeout / IDLE_LOOKS  # (finish_reason moves it earlier)

    async def scenario() -> None:
        repairer = StreamRepairer(RequestFacts(0, {}, True, True), Policy.build(Flavor.SELFHOSTED))
        stream = RepairingStream(repairer, clock=timers.clock, limits=DEFAULT_LIMITS)

        async def end(reason: ProxyEnd) -> None:
            ended.append((timers.now, reason))

        dog = StreamWatchdog(stream, end, lambda coroutine: asyncio.ensure_future(coroutine), clock=timers.clock)
        dog._loop = timers  # type: ignore[assignment]
        dog.plan()
        texts = [event({"role": "assistant", "content": ""}), *(event({"content": f" w{n}"}) for n in range(5))]
        finish = {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        for n, data in enumerate([*texts, b"data: " + orjson.dumps(finish) + b"\n\n", b"data: [DONE]\n\n"]):
            timers.now = 0.01 * (n + 1)
            stream(data)
        assert len(timers.planned) == 2  # at the start, then at finish_reason
        await timers.fire_until(ended)

    asyncio.run(scenario())
    done_at = 0.01 * 8
    assert ended == [(done_at + DEFAULT_LIMITS.done_grace, ProxyEnd.DONE)]
