"""Large request bodies are decoded and repaired in the request worker thread, never on the event
loop; the results (repairs, facts, 413, errors) are the same as on the loop."""

import asyncio
import gzip
import os
import threading
from concurrent.futures import BrokenExecutor

import orjson
import pytest
from kimiwire.mitm import request_side, request_worker
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.request_worker import OFFLOAD_BYTES
from mitmproxy import http
from mitmproxy.test import taddons, tutils

from tests.support.conversations import assistant, body, call, tool, user
from tests.support.in_process import chat_flow, run_request_hook


def _large_request() -> bytes:
    messages = [user()]
    for i in range(OFFLOAD_BYTES // 1000 + 1):
        messages += [assistant(call(f"functionsread{i}", "read")), tool(f"functionsread{i}", "x" * 900)]
    return orjson.dumps(body(messages))


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
        flow = chat_flow(_large_request())
        assert run_request_hook(kw, flow)
        sent = orjson.loads(flow.request.content)
        assert sent["messages"][1]["tool_calls"][0]["id"] == "functions.read:0"
        assert kw.counts["ids.call"] > OFFLOAD_BYTES // 1000
        small = chat_flow(orjson.dumps(body([user()])))
        assert not run_request_hook(kw, small)  # a small body stays on the loop
    assert threads[0].startswith("kimiwire-request-repair") and threads[1] == "MainThread"
    kw.request_worker.close()


def test_a_compressed_bomb_of_any_size_is_refused_from_the_worker():
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", kimi_max_request_bytes=4 * OFFLOAD_BYTES)
        bomb = gzip.compress(b'{"pad": "' + b" " * (32 * OFFLOAD_BYTES) + b'"}', 9)
        assert len(bomb) < OFFLOAD_BYTES // 8  # small, yet decoded in the worker: it may inflate to the limit
        flow = chat_flow(bomb, content_encoding="gzip")
        assert run_request_hook(kw, flow)
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
        flow = chat_flow(content)
        assert run_request_hook(kw, flow)
        assert flow.request.content == content  # forwarded as it came
        assert kw.counts["addon.error"] == 1 and "request repair: RuntimeError: bug" in str(
            flow.metadata["kimiwire"]["errors"]
        )
    kw.request_worker.close()


def test_a_large_flow_is_captured_from_the_worker_redacted_and_whole(tmp_path, monkeypatch):
    from kimiwire.mitm import capture as capture_module
    from kimiwire.mitm import large_capture
    from kimiwire.wire.capture.redaction import REDACTED
    from mitmproxy.io import FlowReader

    threads = []
    saved_state = capture_module.saved_state

    def recording(*args):
        threads.append(threading.current_thread().name)
        return saved_state(*args)

    monkeypatch.setattr(large_capture, "saved_state", recording)
    content = _large_request()[:-1] + b', "api_key": "sk-secret"}'
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir=str(tmp_path))

        async def exchange() -> None:
            flow = chat_flow(content)
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


def _request_of(size: int, **extra: str) -> bytes:
    messages = [user()]
    for i in range(size // 1000 + 1):
        messages += [assistant(call(f"functionsread{i}", "read")), tool(f"functionsread{i}", "x" * 900)]
    return orjson.dumps({**body(messages), **extra})


def test_the_largest_bodies_are_repaired_in_a_worker_process_with_the_same_result():
    from kimiwire.wire.servers.policy import Policy

    content = _request_of(request_worker.PROCESS_BYTES)
    worker = request_worker.RequestWorker()

    async def both():
        return await worker.in_process(os.getpid), await worker.repair(content, Policy())

    try:
        pid, done = asyncio.run(both())
    finally:
        worker.close()
    assert isinstance(pid, int) and pid != os.getpid()
    assert not isinstance(done, request_worker.Raised)
    result, recorded = done
    here, here_recorded = request_worker.repair_and_record(content, Policy())
    assert result.body == here.body and result.facts == here.facts
    assert recorded.entries == here_recorded.entries and len(recorded.entries) > request_worker.PROCESS_BYTES // 1000
    assert recorded.counts == here_recorded.counts and recorded.summary == here_recorded.summary


def test_a_dead_worker_process_costs_that_call_only():
    worker = request_worker.RequestWorker()

    async def calls():
        return await worker.in_process(os._exit, 3), await worker.in_process(int, "x"), await worker.in_process(abs, -2)

    try:
        died, raised, answered = asyncio.run(calls())
    finally:
        worker.close()
    assert isinstance(died, request_worker.Raised) and isinstance(died.error, BrokenExecutor)
    assert isinstance(raised, request_worker.Raised) and isinstance(raised.error, ValueError)
    assert answered == 2  # a fresh pool after the dead one


def test_worker_processes_that_keep_dying_are_given_up_for_the_thread(monkeypatch):
    from kimiwire.wire.servers.policy import Policy

    threads = []
    repair = request_worker.repair_request_body

    def recording(*args):
        threads.append(threading.current_thread().name)
        return repair(*args)

    monkeypatch.setattr(request_worker, "repair_request_body", recording)  # seen in this process only
    content = _request_of(request_worker.PROCESS_BYTES)
    worker = request_worker.RequestWorker()

    real_pool = request_worker.ProcessPoolExecutor

    def unstartable(*args, **kwargs):  # as where the interpreter cannot spawn itself
        raise OSError("cannot start a process")

    async def calls():
        assert worker.processes_work
        assert isinstance(await worker.in_process(os._exit, 3), request_worker.Raised)  # a worker dies
        monkeypatch.setattr(request_worker, "ProcessPoolExecutor", unstartable)
        for _ in range(request_worker.BROKEN_POOLS_BEFORE_THREAD - 1):
            assert worker.processes_work
            assert isinstance(await worker.in_process(abs, -1), request_worker.Raised)  # a pool does not start
        monkeypatch.setattr(request_worker, "ProcessPoolExecutor", real_pool)
        return await worker.repair(content, Policy())

    try:
        done = asyncio.run(calls())
    finally:
        worker.close()
    assert not worker.processes_work
    assert not isinstance(done, request_worker.Raised) and done[1].counts["ids.call"] > 1000
    assert threads == ["kimiwire-request-repair_0"]


def test_a_dead_worker_process_costs_the_repair_never_the_request(monkeypatch):
    async def dead(*args):
        return request_worker.Raised(BrokenExecutor("a worker process died"))

    kw = KimiWire()
    monkeypatch.setattr(kw.request_worker, "in_process", dead)
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="")
        content = _request_of(request_worker.PROCESS_BYTES)
        flow = chat_flow(content)
        assert run_request_hook(kw, flow)
        assert flow.request.content == content and flow.response is None  # forwarded as it came
        assert "request repair: BrokenExecutor" in str(flow.metadata["kimiwire"]["errors"])
    kw.request_worker.close()


@pytest.mark.parametrize("process_fails", [False, True])
def test_a_largest_flow_is_captured_redacted_whatever_the_worker_process_does(tmp_path, monkeypatch, process_fails):
    from kimiwire.mitm import large_capture
    from kimiwire.wire.capture.redaction import REDACTED
    from mitmproxy.io import FlowReader

    redacted_here = []
    real_json_body = large_capture.Redactor.json_body

    def json_body(self, body):
        redacted_here.append(len(body))
        return real_json_body(self, body)

    monkeypatch.setattr(large_capture.Redactor, "json_body", json_body)  # only this process sees it
    content = _request_of(request_worker.PROCESS_BYTES, api_key="sk-secret")
    kw = KimiWire()

    async def dead(*args):
        return request_worker.Raised(BrokenExecutor("a worker process died"))

    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir=str(tmp_path))

        async def exchange() -> None:
            flow = chat_flow(content)
            await kw.request(flow)
            if process_fails:
                monkeypatch.setattr(kw.request_worker.captures, "run", dead)
            flow.response = tutils.tresp(
                content=b'{"choices": []}', headers=http.Headers(content_type="application/json")
            )
            kw.response(flow)
            await asyncio.wait(set(kw.capture_tasks))

        asyncio.run(exchange())
        path = kw.capture.path
        kw.done()
    with open(path, "rb") as f:
        [flow] = list(FlowReader(f).stream())
    sent, upstream = orjson.loads(flow.request.content), orjson.loads(flow.metadata["kimiwire"]["upstream_request"])
    assert sent["api_key"] == REDACTED and upstream["api_key"] == REDACTED
    assert len(sent["messages"]) == len(orjson.loads(content)["messages"])
    assert upstream["messages"][1]["tool_calls"][0]["id"] == "functions.read:0"
    large = [size for size in redacted_here if size >= request_worker.PROCESS_BYTES]
    assert len(large) == (2 if process_fails else 0)  # parsed here only when the process failed
    kw.request_worker.close()


def test_the_capture_worker_process_runs_at_a_lower_priority_than_the_repair_worker():
    worker = request_worker.RequestWorker()

    async def niceness():
        return await worker.repairs.run(os.nice, 0), await worker.captures.run(os.nice, 0)

    try:
        repairs, captures = asyncio.run(niceness())
    finally:
        worker.close()
    assert repairs == os.nice(0) and captures == min(19, os.nice(0) + request_worker.CAPTURE_NICENESS)


def test_an_idle_worker_process_exits_and_the_next_call_starts_another(monkeypatch):
    monkeypatch.setattr(request_worker, "IDLE_WORKER_SECONDS", 0.2)
    lane = request_worker.ProcessLane()

    async def calls():
        first = await lane.run(os.getpid)
        assert lane.started
        await asyncio.sleep(0.1)  # not yet idle long enough
        second = await lane.run(os.getpid)
        await asyncio.sleep(0.6)
        gone = not lane.started
        third = await lane.run(os.getpid)
        return first, second, gone, third

    try:
        first, second, gone, third = asyncio.run(calls())
    finally:
        lane.close()
    assert first == second  # one worker while calls keep coming
    assert gone and third != first  # retired when idle; a new one for the next call
