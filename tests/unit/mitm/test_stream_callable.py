"""The stream callable's clock: a stream passed through undecoded (past the buffer limit, after a
repair raised) is still flowing, so the idle deadline follows its bytes."""

from __future__ import annotations

import zlib

import pytest
from kimiwire.mitm.stream_callable import DecodingStream, RepairingStream
from kimiwire.wire.codecs.content_decoding import BodyDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy
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


def test_the_bodies_come_out_as_bytes_with_one_join_and_stay_usable():
    clock = Clock()
    stream = make_stream(clock)
    text = Stream().chunk({"role": "assistant", "content": ""})
    for n in range(6):
        text = text.chunk({"content": f"word {n} "})
    pieces = text.chunk({}, "stop").events
    for piece in pieces:
        stream(piece)
    upstream = stream.upstream_bytes()
    assert upstream == b"".join(pieces) and type(upstream) is bytes
    assert stream.delivered_bytes() is upstream  # the client got the same bytes: one copy serves both
    assert stream.upstream_bytes() is upstream  # joined once
    # The bytearray views still work, and later bytes are still counted.
    assert stream.upstream == bytearray(upstream)
    stream(b"data: [DONE]\n\n")
    stream(b"")
    assert stream.upstream_bytes() == upstream + b"data: [DONE]\n\n"
    stream.delivered += b": closing\n\n"  # (what the adapter adds after an upstream failure)
    assert stream.delivered_bytes() == upstream + b"data: [DONE]\n\n: closing\n\n"
    assert stream.upstream_bytes() == upstream + b"data: [DONE]\n\n"


def test_a_repaired_stream_keeps_its_own_delivered_bytes():
    clock = Clock()
    stream = make_stream(clock)
    body = (
        Stream()
        .chunk({"role": "assistant", "content": ""})
        .chunk(tool_delta(0, "functions.read:0", "read", ""))
        .chunk(tool_delta(0, None, None, READ_ARGS))
        .chunk({}, "stop")  # a call went out: kimiwire makes it tool_calls
        .body()
    )
    stream(body)
    stream(b"")
    assert stream.upstream_bytes() == body
    assert stream.delivered_bytes() != body and b'"finish_reason":"tool_calls"' in stream.delivered_bytes()


def test_what_the_lane_passed_stays_before_a_later_error_in_the_delivered_bytes():
    """A gzip stream whose events took the lane, then bytes that do not decode: the record's
    delivered bytes are the client's, in the client's order."""
    repairer = StreamRepairer(RequestFacts(0, {}, True, True), Policy.build(Flavor.SELFHOSTED))
    stream = DecodingStream(repairer, BodyDecoder("gzip", 1 << 20), limits=EndingLimits(1.0, 10.0, 60.0))
    text = Stream().chunk({"role": "assistant", "content": ""})
    for n in range(8):
        text = text.chunk({"content": f"word {n} "})
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    sent = []
    for piece in text.events:
        sent += stream(compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH))
    assert stream.lane_events() > 0  # some events took the lane
    sent += stream(b"\x00not gzip at all")
    assert b"upstream_undecodable" in b"".join(sent)
    assert stream.delivered_bytes() == b"".join(sent)
