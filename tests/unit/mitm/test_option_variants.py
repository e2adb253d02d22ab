"""Option variants that only change what the addon decides, run in process on mitmproxy's test flows
(`taddons`, `tflow`) instead of a mitmdump per variant. The network path of each behaviour keeps its
real-mitmdump test: kimi_max_request_bytes in tests/e2e/test_e2e_request_limits.py (refused while the
body arrives) and tests/e2e/test_e2e_guarantees.py (a compressed bomb, default limit); captures in
tests/e2e/test_captures.py."""

import asyncio
import gzip
import threading

import orjson
import pytest
from kimiwire.mitm import large_capture, request_worker
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.request_worker import PROCESS_BYTES, WORKER_PROCESS_FLAG
from mitmproxy import http
from mitmproxy.test import taddons, tutils

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
