"""Large request bodies are decoded and repaired in the request worker thread, never on the event
loop; the results (repairs, facts, 413, errors) are the same as on the loop."""

import asyncio
import gzip
import threading

import orjson
from kimiwire.mitm import flow_recorder, request_side, request_worker
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.request_worker import OFFLOAD_BYTES
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from tests.support.conversations import assistant, body, call, tool, user


def _large_request() -> bytes:
    messages = [user()]
    for i in range(OFFLOAD_BYTES // 1000 + 1):
        messages += [assistant(call(f"functionsread{i}", "read")), tool(f"functionsread{i}", "x" * 900)]
    return orjson.dumps(body(messages))


def _flow(content: bytes, **headers: str) -> http.HTTPFlow:
    req = tutils.treq(
        method=b"POST",
        path=b"/v1/chat/completions",
        content=content,
        headers=http.Headers(content_type="application/json", **headers),
    )
    flow = tflow.tflow(req=req)
    flow.live = True
    return flow


def _run_request_hook(kw: KimiWire, flow: http.HTTPFlow) -> bool:
    """The hook as mitmproxy runs it: on a loop, awaited when it returns a coroutine. True when it did."""

    async def hook() -> bool:
        pending = kw.request(flow)
        if pending is None:
            return False
        await pending
        return True

    return asyncio.run(hook())


def test_a_large_body_is_repaired_in_the_worker_thread(monkeypatch):
    threads = []
    repair = request_side.repair_request_body

    def recording(*args):
        threads.append(threading.current_thread().name)
        return repair(*args)

    monkeypatch.setattr(request_side, "repair_request_body", recording)  # on the loop
    monkeypatch.setattr(request_worker, "repair_request_body", recording)  # in the worker
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="")
        flow = _flow(_large_request())
        assert _run_request_hook(kw, flow)
        sent = orjson.loads(flow.request.content)
        assert sent["messages"][1]["tool_calls"][0]["id"] == "functions.read:0"
        assert kw.counts["ids.call"] > OFFLOAD_BYTES // 1000
        small = _flow(orjson.dumps(body([user()])))
        assert not _run_request_hook(kw, small)  # a small body stays on the loop
    assert threads[0].startswith("kimiwire-request-repair") and threads[1] == "MainThread"
    kw.request_worker.close()


def test_a_compressed_bomb_of_any_size_is_refused_from_the_worker():
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", kimi_max_request_bytes=4 * OFFLOAD_BYTES)
        bomb = gzip.compress(b'{"pad": "' + b" " * (32 * OFFLOAD_BYTES) + b'"}', 9)
        assert len(bomb) < OFFLOAD_BYTES // 8  # small, yet decoded in the worker: it may inflate to the limit
        flow = _flow(bomb, content_encoding="gzip")
        assert _run_request_hook(kw, flow)
        assert flow.response is not None and flow.response.status_code == 413
    kw.request_worker.close()


def test_an_exception_in_the_worker_costs_the_repair_only(monkeypatch):
    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(request_worker, "repair_request_body", boom)
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="")
        content = _large_request()
        flow = _flow(content)
        assert _run_request_hook(kw, flow)
        assert flow.request.content == content  # forwarded as it came
        assert kw.counts["addon.error"] == 1 and "request repair: RuntimeError: bug" in str(
            flow.metadata["kimiwire"]["errors"]
        )
    kw.request_worker.close()


def test_a_large_flow_is_captured_from_the_worker_redacted_and_whole(tmp_path, monkeypatch):
    from kimiwire.mitm import capture as capture_module
    from kimiwire.wire.redaction import REDACTED
    from mitmproxy.io import FlowReader

    threads = []
    saved_state = capture_module.saved_state

    def recording(*args):
        threads.append(threading.current_thread().name)
        return saved_state(*args)

    monkeypatch.setattr(flow_recorder, "saved_state", recording)
    content = _large_request()[:-1] + b', "api_key": "sk-secret"}'
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir=str(tmp_path))

        async def exchange() -> None:
            flow = _flow(content)
            await kw.request(flow)
            flow.response = tutils.tresp(
                content=b'{"choices": []}', headers=http.Headers(content_type="application/json")
            )
            kw.response(flow)
            assert kw.capture_tasks  # written later, by the worker
            await asyncio.wait(set(kw.capture_tasks))

        asyncio.run(exchange())
        path = kw.capture.path
        kw.done()
    assert threads == ["kimiwire-request-repair_0"]
    with open(path, "rb") as f:
        [flow] = list(FlowReader(f).stream())
    sent = orjson.loads(flow.request.content)
    assert sent["api_key"] == REDACTED and len(sent["messages"]) == len(orjson.loads(content)["messages"])
    kw.request_worker.close()
