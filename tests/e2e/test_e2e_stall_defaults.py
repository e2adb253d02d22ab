"""A stalled first attempt at the DEFAULT timeouts, every one scaled by one factor
(`kimi_timeout_scale`), so the test runs in seconds with the defaults' ratios: the client has its
answer within 150 (scaled) seconds, and while it waits (before the upstream's headers too: the
early head) it hears a comment at least every 15 (scaled) seconds."""

from __future__ import annotations

import itertools
import time
import uuid

import httpx
import openai
import pytest
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT

from tests.support.conversations import TOOLS
from tests.support.proxied import proxied
from tests.support.streams import Stream
from tests.support.upstream import json_reply, sse_reply

SCALE = 0.05  # 150 s -> 7.5 s
ANSWER_WITHIN = 150 * SCALE
COMMENT_EVERY = 15 * SCALE
CALL = b'"arguments":"{\\"path\\":\\"/w/a.txt\\"}"'


@pytest.fixture(scope="module")
def simulator():
    with SimulatorThread(SimSettings(hold=30)) as sim:
        yield sim


@pytest.fixture(scope="module")
def proxy(simulator, tmp_path_factory):
    options = {"kimi_timeout_scale": str(SCALE)}
    with proxied(simulator, tmp_path_factory.mktemp("defaults"), options, save_flows=False) as p:
        yield p


def request_body() -> dict:
    return {
        "model": "kimi-k2-thinking",
        "messages": [{"role": "user", "content": "read /w/a.txt"}],
        "tools": TOOLS,
        "stream": True,
    }


def timed_stream(url: str, fault: str) -> tuple[list[tuple[float, bytes]], float]:
    """(seconds after the request, bytes) of each read, and when the headers came."""
    header = f"fault={fault}, run={uuid.uuid4().hex[:8]}"
    reads: list[tuple[float, bytes]] = []
    with httpx.Client(timeout=60) as client:  # (made first: a new client loads its CA bundle)
        started = time.monotonic()
        with client.stream(
            "POST", f"{url}/v1/chat/completions", json=request_body(), headers={"x-kimi-sim": header}
        ) as response:
            assert response.status_code == 200 and response.reason_phrase == "OK"
            headers_at = time.monotonic() - started
            for piece in response.iter_raw():
                reads.append((time.monotonic() - started, piece))
    return reads, headers_at


@pytest.mark.parametrize("fault", ["headers-stall:1", "reasoning-stall:1", "stall-first:1"])
def test_a_stall_after_the_headers_is_retried_in_time_and_the_client_hears_comments(proxy, fault):
    reads, headers_at = timed_stream(proxy.url, fault)
    body = b"".join(piece for _, piece in reads)
    assert CALL in body and body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
    assert reads[-1][0] < ANSWER_WITHIN
    times = [headers_at] + [at for at, _ in reads]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) < COMMENT_EVERY, gaps
    assert KEEPALIVE_COMMENT in body


@pytest.mark.parametrize("fault", ["silent:1", "refuse:1"])
def test_no_headers_at_all_is_retried_in_time_and_streamed(proxy, fault):
    """Before the upstream's headers the client gets an early head after kimi_keepalive (10 s)
    and comments; the retry after kimi_first_byte_timeout (60 s) streams into that body."""
    reads, headers_at = timed_stream(proxy.url, fault)
    body = b"".join(piece for _, piece in reads)
    assert CALL in body and body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
    assert reads[-1][0] < ANSWER_WITHIN
    assert headers_at < 10 * SCALE + COMMENT_EVERY
    if fault.startswith("silent"):
        assert body.count(KEEPALIVE_COMMENT) >= 4  # from the head to the retry's answer, every 10 s
    times = [0.0, headers_at] + [at for at, _ in reads]
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) < COMMENT_EVERY


def test_the_openai_sdk_reads_an_early_head_and_the_retry_after_it(proxy):
    """An upstream that sends no headers for the first attempt: the SDK's stream is clean."""
    started = time.monotonic()
    assert _sdk_streamed_arguments(proxy, "silent:1") == '{"path":"/w/a.txt"}'
    assert time.monotonic() - started < ANSWER_WITHIN


def test_the_openai_sdk_takes_the_comments_in_its_stride(proxy):
    """The SDK (like openai-node and eventsource-parser) skips comment lines: no event, no error."""
    assert _sdk_streamed_arguments(proxy, "headers-stall:1") == '{"path":"/w/a.txt"}'


def _sdk_streamed_arguments(proxy, fault: str) -> str:
    """The OpenAI SDK streams one request with the simulator's `fault`; the tool arguments it read."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, timeout=60)
    header = f"fault={fault}, run={uuid.uuid4().hex[:8]}"
    with client:
        stream = client.chat.completions.create(**request_body(), extra_headers={"x-kimi-sim": header})
        return "".join(
            call.function.arguments or ""
            for chunk in stream
            for choice in chunk.choices
            for call in choice.delta.tool_calls or []
        )


def test_a_retry_waiting_for_its_own_prefill_keeps_the_client_hearing_comments(tmp_path):
    """A 503, then a second attempt whose first event takes 40 s (a long prefill): the client has
    200 OK at once and a comment at least every 15 s until the answer streams."""
    answer = Stream(rid="chatcmpl-up").chunk({"role": "assistant", "content": ""}).chunk({"content": "Hello."})
    replies = iter(
        [
            json_reply({"error": {"message": "busy", "type": "server_error", "code": 503}}, 503),
            sse_reply(answer.chunk({}, "stop").done().events, first_gap=40 * SCALE),
        ]
    )
    with proxied(
        lambda request: next(replies), tmp_path, {"kimi_timeout_scale": str(SCALE)}, save_flows=False
    ) as proxy:
        reads, headers_at = timed_stream(proxy.url, "none")
    body = b"".join(piece for _, piece in reads)
    assert b'"content":"Hello."' in body and body.endswith(b"data: [DONE]\n\n")
    assert headers_at < 40 * SCALE - COMMENT_EVERY  # at once, not when the retry answers (a cold proxy is slow)
    comments_before_answer = body.split(b"Hello.")[0].count(KEEPALIVE_COMMENT)
    assert comments_before_answer >= 2
    times = [headers_at] + [at for at, _ in reads]
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) < COMMENT_EVERY
