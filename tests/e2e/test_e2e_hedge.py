"""A hedged attempt (`kimi_hedge_after=30`) at the default timeouts, every one scaled by one factor:
a first attempt that stalls (headers then nothing, or no headers at all) is overtaken by the hedge,
and the client has its answer within 60 (scaled) seconds; a first attempt that shows content first
keeps the turn and the hedge is cancelled."""

from __future__ import annotations

import time

import openai
import pytest

from tests.support.proxied import proxied
from tests.support.streams import Stream
from tests.support.upstream import Reply, sse_reply

SCALE = 0.05
REQUEST = {"model": "kimi-k2", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def events(text: str) -> list[bytes]:
    stream = Stream(rid="chatcmpl-h").chunk({"role": "assistant", "content": ""}).chunk({"content": text})
    return stream.chunk({}, "stop").done().events


def connections_to(port: int) -> int:
    """ESTABLISHED TCP connections (IPv4) whose remote end is 127.0.0.1:`port` (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[3] == "01" and int(row[2].split(":")[1], 16) == port)


def read(client: openai.OpenAI) -> tuple[str, float]:
    started = time.monotonic()
    stream = client.chat.completions.create(**REQUEST)
    text = "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)
    return text, time.monotonic() - started


STALLS = {
    "headers then nothing": Reply(headers={"content-type": "text/event-stream"}, pieces=[], hold_open=200 * SCALE),
    "no headers": Reply(header_delay=200 * SCALE),
}


@pytest.mark.parametrize("stall", list(STALLS))
def test_the_hedge_answers_a_stalled_first_attempt_within_60_seconds(tmp_path, stall):
    replies = iter([sse_reply(events("warm")), STALLS[stall], sse_reply(events("From the hedge."))])
    options = {"kimi_timeout_scale": str(SCALE), "kimi_hedge_after": "30"}
    with (
        proxied(lambda request: next(replies), tmp_path, options) as proxy,
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk", max_retries=0, timeout=30) as client,
    ):
        assert read(client)[0] == "warm"  # (a cold proxy is slow on its first request)
        text, seconds = read(client)
    assert text == "From the hedge."
    assert 30 * SCALE <= seconds < 60 * SCALE
    flow = proxy.read_flows()[-1]
    record = flow.metadata["kimiwire"]
    assert [a["why"] for a in record["attempts"]] == ["first", "hedge"]
    assert record["attempts"][-1]["outcome"] == "answered" and record["ending"] == "retried"
    assert "retry.hedge_won=1" in proxy.output


def test_a_first_attempt_that_shows_content_first_keeps_the_turn(tmp_path):
    first = sse_reply(events("From the first."), first_gap=35 * SCALE)
    hedge = sse_reply(events("From the hedge."), first_gap=20 * SCALE)
    replies = iter([sse_reply(events("warm")), first, hedge])
    options = {"kimi_timeout_scale": str(SCALE), "kimi_hedge_after": "30"}
    with (
        proxied(lambda request: next(replies), tmp_path, options) as proxy,
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk", max_retries=0, timeout=30) as client,
    ):
        assert read(client)[0] == "warm"
        upstream = proxy.upstream
        before = connections_to(upstream.port)  # the proxy's own (kept alive or not)
        text, _ = read(client)
        assert len(upstream.requests) == 3  # the hedge was sent
        time.sleep(5 * SCALE)
        # The hedge's connection (its answer is not due yet) was closed: no more than before.
        assert connections_to(upstream.port) <= before
    assert text == "From the first."
    record = proxy.read_flows()[-1].metadata["kimiwire"]
    assert record["hedge"]["outcome"] == "cancelled" and "attempts" not in record
