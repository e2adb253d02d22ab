"""What the client of a streamed request gets when a failure before the client heard anything is
retried and the attempts run out: the retry loop and its attempts run for real, in process, against
an httpx mock upstream (no sockets)."""

import asyncio

import httpx
import orjson
import pytest
from kimiwire.mitm import proxy_internals
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.proxy_internals import error_answers
from kimiwire.mitm.retry import UpstreamClient
from mitmproxy import flow as mitm_flow
from mitmproxy import http
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.test import taddons, tutils

from tests.support import streams
from tests.support.conversations import body, user
from tests.support.in_process import chat_flow

NOT_AN_OBJECT = "[1, 2]"  # arguments that parse, but not to an object: an invalid call


def _upstream(content_type: str, content: bytes):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, stream=httpx.ByteStream(content))

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def _broken_buffered_flow(stream: bool) -> http.HTTPFlow:
    """A chat request whose upstream sent JSON headers, then broke its body: the client has heard
    nothing yet (the body is buffered), so the error hook retries it before answering."""
    return chat_flow(orjson.dumps(body([user()], stream=stream)))


def _answer_after_attempts(monkeypatch, content: bytes, stream: bool) -> proxy_internals.ErrorAnswer:
    if not proxy_internals.usable():
        pytest.skip("mitmproxy internals not usable here: no error answers")
    # Answering wraps mitmproxy's Http1Server.send for the process (no client layer here): undone after.
    monkeypatch.setattr(Http1Server, "send", Http1Server.send)
    monkeypatch.setattr(error_answers, "_CLASS_WRAPPED", error_answers._CLASS_WRAPPED)
    monkeypatch.setattr(error_answers, "_INSTALLED", error_answers._INSTALLED)
    client = _upstream("text/event-stream" if stream else "application/json", content)
    monkeypatch.setattr(UpstreamClient, "get", lambda self: client)
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", kimi_retry_backoff="0.001")
        flow = _broken_buffered_flow(stream)
        kw.request(flow)
        flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"), content=b'{"id": ')
        flow.error = mitm_flow.Error("peer closed connection without sending complete message body")
        retry = kw.error(flow)
        assert retry is not None, "the failure was not retried"
        asyncio.run(retry)
        answer = error_answers._ANSWERS.pop(flow.client_conn.id)
    assert kw.counts["retry.exhausted"] == 1
    return answer


def test_a_streamed_request_gets_the_last_attempts_invalid_call_as_an_event_stream(monkeypatch):
    sse = streams.sglang([("read", NOT_AN_OBJECT)]).body()
    answer = _answer_after_attempts(monkeypatch, sse, stream=True)
    # Every call the upstream made reaches the client: as it came, in the stream the client asked for.
    assert (answer.status, answer.content_type) == (200, "text/event-stream")
    assert answer.body.count(b'"name":"read"') == 1 and b"[1, 2]" in answer.body.replace(b"\\", b"")
    assert answer.body.endswith(b"data: [DONE]\n\n")


def test_a_streamed_request_gets_an_empty_turn_as_an_error_event(monkeypatch):
    sse = streams.Stream().chunk({"role": "assistant", "content": ""}).chunk({}, "stop").done().body()
    answer = _answer_after_attempts(monkeypatch, sse, stream=True)
    assert (answer.status, answer.content_type) == (200, "text/event-stream")
    assert b"upstream_empty_turn" in answer.body and answer.body.endswith(b"data: [DONE]\n\n")


def test_a_non_streamed_request_still_gets_the_json_error(monkeypatch):
    message = {"role": "assistant", "content": ""}
    empty = {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    answer = _answer_after_attempts(monkeypatch, orjson.dumps(empty), stream=False)
    assert (answer.status, answer.content_type) == (502, "application/json")
    assert orjson.loads(answer.body)["error"]["type"] == "upstream_empty_turn"
