"""The stream callable's clock: a stream passed through undecoded (past the buffer limit, after a
repair raised) is still flowing, so the idle deadline follows its bytes."""

from __future__ import annotations

import pytest
from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.policy import Flavor, Policy
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.stream_endings import EndingLimits, next_deadline

from tests.support.streams import READ_ARGS, Stream, tool_delta


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_stream(clock: Clock, buffer_limit: int = 8 << 20) -> RepairingStream:
    policy = Policy.build(Flavor.SELFHOSTED, stream_buffer_limit=buffer_limit)
    repairer = StreamRepairer(RequestFacts(), policy)
    return RepairingStream(repairer, clock=clock, limits=EndingLimits(idle_timeout=10, first_byte_timeout=600))


def idle_deadline(stream: RepairingStream) -> float:
    planned = next_deadline(stream.times, stream.limits)
    assert planned is not None and planned[1] == "idle"
    return planned[0]


@pytest.mark.parametrize("why", ["buffer_limit", "repair_raised"])
def test_a_passed_through_stream_keeps_the_idle_deadline_moving(why, monkeypatch):
    clock = Clock()
    stream = make_stream(clock, buffer_limit=1024 if why == "buffer_limit" else 8 << 20)
    head = Stream().chunk({"role": "assistant", "content": ""}).chunk(tool_delta(0, "functions.read:0", "read", ""))
    stream(head.body())
    if why == "repair_raised":
        monkeypatch.setattr(stream.repairer, "feed", lambda data: 1 / 0)
    big = Stream().chunk(tool_delta(0, arguments=READ_ARGS[:5] + " " * 2000)).body()
    stream(big)  # past the limit, or the repair raises: the stream turns to passthrough
    assert stream.failed or stream.repairer.bypass
    for second in range(1, 60):
        clock.now = second * 5.0
        out = stream(Stream().chunk({"content": "x"}).body())
        assert out and idle_deadline(stream) == clock.now + 10  # 5 s gaps never reach the 10 s idle timeout
