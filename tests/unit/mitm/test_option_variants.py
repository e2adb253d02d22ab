"""Option variants that only change what the addon decides, run in process on mitmproxy's test flows
(`taddons`, `tflow`) instead of a mitmdump per variant. The network path of each behaviour keeps its
real-mitmdump test: kimi_max_request_bytes in tests/e2e/test_e2e_request_limits.py (refused while the
body arrives) and tests/e2e/test_e2e_guarantees.py (a compressed bomb, default limit); captures in
tests/e2e/test_captures.py; retries with the default options (and the variants whose attempts write into
the client's open body) in tests/e2e/test_e2e_retries.py."""

import asyncio
import gzip
import threading
import time

import httpx
import orjson
import pytest
from kimiwire.mitm import large_capture, request_worker
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.request_worker import PROCESS_BYTES, WORKER_PROCESS_FLAG
from kimiwire.mitm.retry import UpstreamClient
from mitmproxy import http
from mitmproxy.test import taddons, tutils

from tests.support import streams
from tests.support.conversations import assistant, body, call, tool, user
from tests.support.endings import REQUEST
from tests.support.in_process import chat_flow, run_request_hook


def test_the_request_limit_is_an_option():
    body = orjson.dumps({**REQUEST, "messages": [user("x" * 5000)]})
    small_gzipped = gzip.compress(orjson.dumps(REQUEST))
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", kimi_max_request_bytes=4096)
        big = chat_flow(body)
        run_request_hook(kw, big)
        small = chat_flow(small_gzipped, content_encoding="gzip")
        run_request_hook(kw, small)
    assert big.response is not None and big.response.status_code == 413
    assert orjson.loads(big.response.content)["error"]["code"] == "request_too_large"
    assert small.response is None  # goes upstream
    assert orjson.loads(small.request.content)["messages"] == REQUEST["messages"]
    kw.request_worker.close()


@pytest.mark.parametrize("capture_dir", ["captures", ""])
def test_captures_off_when_the_option_is_empty(tmp_path, monkeypatch, capture_dir):
    """The default folder ("captures", under the working directory) gets the run's capture; an empty
    kimi_capture_dir writes none and makes no folder."""
    monkeypatch.chdir(tmp_path)
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir=capture_dir)

        async def exchange() -> None:
            flow = chat_flow(orjson.dumps(REQUEST))
            pending = kw.request(flow)
            if pending is not None:
                await pending
            flow.response = tutils.tresp(
                content=b'{"choices": []}', headers=http.Headers(content_type="application/json")
            )
            kw.response(flow)
            if kw.capture_tasks:
                await asyncio.wait(set(kw.capture_tasks))

        asyncio.run(exchange())
        kw.done()
    captured = sorted(tmp_path.rglob("kimiwire-*.mitm"))
    if capture_dir:
        assert [p.parent for p in captured] == [tmp_path / "captures"]
    else:
        assert not captured and not (tmp_path / "captures").exists()
    kw.request_worker.close()


@pytest.mark.parametrize("worker_processes", [True, False])
def test_worker_processes_is_an_option_and_a_flow_repaired_in_one_says_so(tmp_path, monkeypatch, worker_processes):
    """kimi_worker_processes=false repairs and redacts the largest bodies in the proxy's process (its
    thread), where the calls below are seen; on (the default) they go to worker processes, which do
    not see this process's patches, and the flow is flagged and commented."""
    repaired_here: list[str] = []
    repair = request_worker.repair_request_body

    def recording_repair(*args):
        repaired_here.append(threading.current_thread().name)
        return repair(*args)

    redacted_here: list[int] = []
    json_body = large_capture.Redactor.json_body

    def recording_redaction(self, content):
        redacted_here.append(len(content))
        return json_body(self, content)

    monkeypatch.setattr(request_worker, "repair_request_body", recording_repair)
    monkeypatch.setattr(large_capture.Redactor, "json_body", recording_redaction)
    messages = [user()]
    for i in range(PROCESS_BYTES // 1000 + 1):
        messages += [assistant(call(f"functionsread{i}", "read")), tool(f"functionsread{i}", "x" * 900)]
    content = orjson.dumps(body(messages))
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir=str(tmp_path), kimi_worker_processes=worker_processes)
        flow = chat_flow(content)

        async def exchange() -> None:
            await kw.request(flow)
            flow.response = tutils.tresp(
                content=b'{"choices": []}', headers=http.Headers(content_type="application/json")
            )
            kw.response(flow)
            await asyncio.wait(set(kw.capture_tasks))

        try:
            asyncio.run(exchange())
            kw.done()
        finally:
            kw.request_worker.close()
    assert orjson.loads(flow.request.content)["messages"][1]["tool_calls"][0]["id"] == "functions.read:0"
    record = flow.metadata["kimiwire"]
    large_redactions = [size for size in redacted_here if size >= PROCESS_BYTES]
    if worker_processes:
        assert repaired_here == [] and large_redactions == []
        assert WORKER_PROCESS_FLAG in record["flags"] and WORKER_PROCESS_FLAG in flow.comment.split()
        assert flow.marked
    else:
        assert repaired_here == ["kimiwire-request-repair_0"] and len(large_redactions) == 2
        assert WORKER_PROCESS_FLAG not in record.get("flags", []) and WORKER_PROCESS_FLAG not in flow.comment


EMPTY_TURN = streams.Stream().chunk({"role": "assistant", "content": ""}).chunk({}, "stop").done().body()


@pytest.mark.parametrize("retry_on", [None, ""])
def test_no_retry_checks_pass_an_empty_streamed_turn_as_it_came(retry_on):
    """kimi_retry_on= (empty): no checks, no retries: an empty streamed turn reaches the client as the
    upstream sent it, [DONE] included, and the response hook starts no attempt. By default the same
    turn is held back (no [DONE] yet) and retried."""
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", **({} if retry_on is None else {"kimi_retry_on": retry_on}))
        flow = chat_flow(orjson.dumps(body([user()])))

        async def exchange() -> tuple[bytes, object]:
            assert kw.request(flow) is None
            flow.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream"), content=b"")
            kw.responseheaders(flow)
            stream = flow.response.stream
            assert callable(stream)
            delivered = b"".join([*stream(EMPTY_TURN), *stream(b"")])
            failed_turn = kw.flows.of(flow).stream.failed_turn  # what the response hook retries
            if failed_turn is None:
                assert kw.response(flow) is None  # no attempt after the first: the upstream is asked once
            return delivered, failed_turn

        delivered, failed_turn = asyncio.run(exchange())
    if retry_on == "":
        assert failed_turn is None and delivered.endswith(b"data: [DONE]\n\n") and b"error" not in delivered
        assert b'"finish_reason":"stop"' in delivered
    else:
        assert failed_turn is not None and failed_turn.kind == "empty" and b"[DONE]" not in delivered
    kw.request_worker.close()


def test_the_retry_budget_bounds_the_attempts_of_a_request(monkeypatch):
    """kimi_retries=10 within kimi_retry_budget=1.5 s (backoff 0.4 s, doubling, full jitter): an
    upstream that answers 503 every time gets a few attempts, not eleven, and the client its 503
    within the budget and one backoff."""
    asked: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        error = b'{"error": {"message": "overloaded"}}'
        return httpx.Response(503, headers={"content-type": "application/json"}, stream=httpx.ByteStream(error))

    client = httpx.AsyncClient(transport=httpx.MockTransport(unavailable))
    monkeypatch.setattr(UpstreamClient, "get", lambda self: client)
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(
            kw, kimi_capture_dir="", kimi_retries=10, kimi_retry_budget="1.5", kimi_retry_backoff="0.4"
        )
        flow = chat_flow(orjson.dumps(body([user()], stream=False)))
        assert kw.request(flow) is None
        flow.response = tutils.tresp(
            status_code=503, headers=http.Headers(content_type="application/json"), content=b'{"error": {}}'
        )
        started = time.monotonic()
        retry = kw.response(flow)
        assert retry is not None
        asyncio.run(retry)
        elapsed = time.monotonic() - started
    assert flow.response.status_code == 503
    assert elapsed < 2.5
    assert 2 <= 1 + len(asked) < 11  # the first attempt, then the retries the budget left room for
    record = flow.metadata["kimiwire"]
    assert [a["outcome"] for a in record["attempts"]] == ["status"] * (1 + len(asked))
    assert "retry budget of 1.5 s" in record["retry_gave_up"]  # the budget ended them, not the count
    kw.request_worker.close()
