"""An early head: a streaming HTTP/1 client whose upstream sends no response headers gets a
`200 OK` event-stream head after kimi_keepalive and comments, and the upstream's late answer (an
event stream, an error status, a whole completion) in that same body, framed cleanly. Default
timeouts, every one scaled by one factor (`kimi_timeout_scale`)."""

from __future__ import annotations

import itertools
import socket
import time
from urllib.parse import urlsplit

import h11
import orjson
import pytest
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT

from tests.support.mitm import Mitmdump
from tests.support.streams import Stream
from tests.support.upstream import TEXT_COMPLETION, RecordingUpstream, Reply, json_reply, sse_reply

SCALE = 0.05
KEEPALIVE = 10 * SCALE
LATE = 30 * SCALE  # the upstream's headers come after three comments' worth, before the first-byte timeout


def raw_exchange(url: str, body: dict) -> tuple[h11.Response, list[tuple[float, bytes]], bytes]:
    """POST over a plain socket, parsed by h11 (strict HTTP/1.1 framing: a stray head, a broken
    chunk or a missing terminator raise). (the head, (seconds, data) of each body chunk, the raw bytes)."""
    parts = urlsplit(url)
    payload = orjson.dumps(body)
    headers = [("host", parts.netloc), ("content-type", "application/json"), ("content-length", str(len(payload)))]
    conn = h11.Connection(h11.CLIENT)
    raw = bytearray()
    head: h11.Response | None = None
    chunks: list[tuple[float, bytes]] = []
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        started = time.monotonic()
        request = h11.Request(
            method="POST",
            target="/v1/chat/completions",
            headers=headers,
        )
        sock.sendall(conn.send(request) + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                raw += data
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                chunks.append((time.monotonic() - started, bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the body ended without its terminator")
    assert head is not None
    return head, chunks, bytes(raw)


def streamed(content: str = "Hello.") -> list[bytes]:
    answer = Stream(rid="chatcmpl-up").chunk({"role": "assistant", "content": ""}).chunk({"content": content})
    return answer.chunk({}, "stop").done().events


def chat(stream: bool = True) -> dict:
    return {"model": "kimi-k2", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@pytest.fixture
def proxy_for(tmp_path):
    opened = []

    def start(replies: list[Reply], **options: str):
        answers = iter(replies)
        upstream = RecordingUpstream(lambda request: next(answers)).__enter__()
        proxy = Mitmdump(upstream.url, tmp_path, {"kimi_timeout_scale": str(SCALE), **options}, save_flows=False)
        opened.append(upstream)
        opened.append(proxy.__enter__())
        return proxy, upstream

    yield start
    for thing in reversed(opened):
        thing.__exit__(None, None, None)


def test_late_headers_go_on_in_the_early_heads_body(proxy_for):
    late = sse_reply(streamed(), header_delay=LATE)
    late.headers["x-upstream-head"] = "1"
    proxy, _ = proxy_for([late])
    head, chunks, raw = raw_exchange(proxy.url, chat())
    body = b"".join(data for _, data in chunks)
    assert head.status_code == 200 and dict(head.headers)[b"content-type"] == b"text/event-stream"
    assert raw.count(b"HTTP/1.1 ") == 1 and b"x-upstream-head" not in raw  # mitmproxy's head never followed
    assert body.split(b"data: ")[0].count(KEEPALIVE_COMMENT) >= 2
    assert b'"content":"Hello."' in body and body.endswith(b"data: [DONE]\n\n")
    times = [at for at, _ in chunks]
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) < KEEPALIVE + 5 * SCALE


def test_a_late_error_status_becomes_an_error_event_in_the_stream(proxy_for):
    refusal = json_reply({"error": {"message": "bad model", "type": "invalid_request_error", "code": None}}, 400)
    refusal.header_delay = LATE
    proxy, _ = proxy_for([refusal])
    head, chunks, _ = raw_exchange(proxy.url, chat())
    body = b"".join(data for _, data in chunks)
    assert head.status_code == 200
    events = [e for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["message"] == "bad model" and error["type"] == "invalid_request_error"


def test_a_late_whole_completion_is_streamed_as_events(proxy_for):
    whole = json_reply(TEXT_COMPLETION)
    whole.header_delay = LATE
    proxy, _ = proxy_for([whole])
    _, chunks, _ = raw_exchange(proxy.url, chat())
    body = b"".join(data for _, data in chunks)
    assert b'"content":"hi"' in body and b'"finish_reason":"stop"' in body and body.endswith(b"data: [DONE]\n\n")


def test_no_headers_and_no_retries_ends_with_a_timeout_event(proxy_for):
    proxy, _ = proxy_for([Reply(header_delay=100 * SCALE)], kimi_retry_on="")
    head, chunks, _ = raw_exchange(proxy.url, chat())
    body = b"".join(data for _, data in chunks)
    assert head.status_code == 200 and body.count(KEEPALIVE_COMMENT) >= 4
    events = [e for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["type"] == "upstream_timeout"
    # kimi_first_byte_timeout (60 s) counts from the request, the first comment from 10 s after it
    assert chunks[-1][0] - chunks[0][0] < (60 - 10) * SCALE + 5 * SCALE


def test_a_request_that_is_not_streamed_gets_no_early_head(proxy_for):
    whole = json_reply(TEXT_COMPLETION)
    whole.header_delay = LATE
    proxy, _ = proxy_for([whole])
    head, chunks, _ = raw_exchange(proxy.url, chat(stream=False))
    assert dict(head.headers)[b"content-type"] == b"application/json"
    assert orjson.loads(b"".join(data for _, data in chunks))["choices"][0]["message"]["content"] == "hi"


def test_a_late_retryable_status_is_retried_into_the_early_heads_body(proxy_for):
    busy = json_reply({"error": {"message": "busy", "type": "server_error", "code": 503}}, 503)
    busy.header_delay = LATE
    proxy, upstream = proxy_for([busy, sse_reply(streamed("After the retry."))])
    _, chunks, raw = raw_exchange(proxy.url, chat())
    body = b"".join(data for _, data in chunks)
    assert raw.count(b"HTTP/1.1 ") == 1 and len(upstream.requests) == 2
    assert b'"content":"After the retry."' in body and body.endswith(b"data: [DONE]\n\n") and b"busy" not in body
