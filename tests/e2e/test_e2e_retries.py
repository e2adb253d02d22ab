"""Retries through mitmdump against the simulator's turn faults: the client gets one clean
answer, the upstream saw N+1 identical requests, time stays bounded, and when attempts run out the
failure is explicit, never a silent empty success. Retry options that only change what the addon
decides (kimi_retry_on empty, the budget) are varied in process in tests/unit/mitm/test_option_variants.py;
the variants here write into the client's open body (kimi_retries=0 streamed, kimi_retry_stream=false)
or need a real client that leaves, so each has its own mitmdump."""

import contextlib
import threading
import time
import uuid

import httpx
import openai
import orjson
import pytest
from kimiwire.mitm.capture import delivered_body
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings
from kimiwire.wire.codecs.sse import SSEDecoder

from tests.support.clients import EXPECTED_ANSWER, EXPECTED_TOOL_RUNS, run_openai_sdk, run_piai, tool_runs
from tests.support.conversations import TOOLS
from tests.support.mitm import Mitmdump, free_port
from tests.support.proxied import proxied
from tests.support.upstream import sse_reply

OPTIONS = {
    "kimi_retry_backoff": "0.1",
    "kimi_idle_timeout": "1",
    "kimi_first_byte_timeout": "1.5",
    "kimi_done_grace": "0.3",
}


@pytest.fixture(scope="module")
def simulator():
    with SimulatorThread(SimSettings(hold=5)) as sim:
        yield sim


@pytest.fixture(scope="module")
def proxy(simulator, tmp_path_factory):
    with proxied(simulator, tmp_path_factory.mktemp("retry"), OPTIONS, save_flows=False) as p:
        yield p


def sim_header(fault: str, shape: str = "sglang") -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    return f"shape={shape}, fault={fault}, run={run}", run


def seen_by_upstream(simulator, run: str) -> list[dict]:
    return [r for r in httpx.get(f"{simulator.url}/_sim/requests").json() if f"run={run}" in r["settings"]]


def post(url: str, header: str, stream: bool, task: str = "read /w/a.txt", timeout: float = 15) -> httpx.Response:
    body = {"model": "kimi-k2-thinking", "messages": [{"role": "user", "content": task}], "tools": TOOLS}
    body["stream"] = stream
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-kimi-sim": header}, timeout=timeout)


def assembled_calls(chunks: list) -> list[tuple]:
    """(index, id, name, arguments) of each call, its deltas joined as an OpenAI client joins them."""
    calls: dict[int, list] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], [delta["index"], None, None, ""])
                call[1] = call[1] or delta.get("id")
                call[2] = call[2] or delta.get("function", {}).get("name")
                call[3] += delta.get("function", {}).get("arguments") or ""
    return [tuple(c) for c in calls.values()]


def sse_chunks(body: bytes) -> list:
    decoder = SSEDecoder()
    return [e.data for e in decoder.feed(body) + decoder.end() if e.data is not None]


@pytest.mark.parametrize(
    ("fault", "shape"),
    [("empty:1", "sglang"), ("reasoning-only:2", "vllm"), ("empty-tool-arrays:1", "vllm")],
)
def test_streamed_empty_turns_are_retried_into_one_clean_response(proxy, simulator, fault, shape):
    header, run = sim_header(fault, shape)
    response = post(proxy.url, header, True)
    assert response.status_code == 200
    events = sse_chunks(response.content)
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    chunks = [orjson.loads(e) for e in events[:-1]]
    roles = [c for c in chunks for ch in c["choices"] if "role" in ch["delta"]]
    assert len(roles) == 1
    assert len({c["id"] for c in chunks}) == 1
    assert assembled_calls(chunks) == [(0, "functions.read:0", "read", '{"path":"/w/a.txt"}')]
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["tool_calls"]
    failing = int(fault.split(":")[1])
    requests = seen_by_upstream(simulator, run)
    assert [r["attempt"] for r in requests] == list(range(1, failing + 2))
    assert len({r["sha256"] for r in requests}) == 1


def test_the_openai_sdk_finishes_the_task_through_empty_turns(proxy, simulator):
    header, run = sim_header("empty:1")
    report = run_openai_sdk(proxy.url, header)
    assert report["outcome"] == "answered", report
    assert [(r["name"], r["arguments"]) for r in report["toolRuns"]] == [(n, a) for n, a in EXPECTED_TOOL_RUNS]
    assert report["finalText"] == EXPECTED_ANSWER
    requests = seen_by_upstream(simulator, run)
    assert len(requests) == 2 * (len(report["turns"]))  # every turn failed once, then answered


def test_piai_finishes_the_task_through_reasoning_only_turns(proxy, simulator):
    header, _ = sim_header("reasoning-only:1", "vllm")
    report = run_piai("0.67.68", proxy.url, header)
    assert tool_runs(report) == EXPECTED_TOOL_RUNS, report
    assert report["finalText"] == EXPECTED_ANSWER
    # what pi-ai shows: one thinking block, the failed attempt's reasoning, a blank line, the retry's
    first = 'Step 1 of 3: I should call read {"path":"/w/a.txt"}.'
    assert report["turns"][0]["thinking"] == [f"{first}\n\n{first}"]


@pytest.mark.parametrize("fault", ["empty:1", "status:503:2", "refuse:1", "invalid-call:1"])
def test_non_streamed_turns_are_retried(proxy, simulator, fault):
    header, run = sim_header(fault)
    response = post(proxy.url, header, False)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert [(c["id"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("functions.read:0", '{"path":"/w/a.txt"}')
    ]
    requests = seen_by_upstream(simulator, run)
    failing = int(fault.rsplit(":", 1)[1])
    assert len(requests) == failing + 1 and len({r["sha256"] for r in requests}) == 1


@pytest.mark.parametrize("fault", ["status:503:1", "refuse:1", "stall-first:1", "invalid-call:1"])
def test_streamed_failures_before_an_answer_are_retried(proxy, simulator, fault):
    header, run = sim_header(fault)
    started = time.monotonic()
    response = post(proxy.url, header, True)
    assert response.status_code == 200, response.text
    events = sse_chunks(response.content)
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    text = b"".join(events)
    assert b'"arguments":"{\\"path\\":\\"/w/a.txt\\"}"' in text and b"error" not in text
    assert len(seen_by_upstream(simulator, run)) == 2
    assert time.monotonic() - started < 6


def test_attempts_run_out_explicitly(simulator, tmp_path):
    with proxied(simulator, tmp_path, {**OPTIONS, "kimi_retries": 0}, save_flows=False) as proxy:
        header, run = sim_header("empty:5")
        streamed = post(proxy.url, header, True)
        events = sse_chunks(streamed.content)
        assert events[-1] == b"[DONE]"
        error = orjson.loads(events[-2])["error"]
        assert error["type"] == "upstream_empty_turn"
        plain = post(proxy.url, sim_header("empty:5")[0], False)
        assert plain.status_code == 502 and plain.json()["error"]["type"] == "upstream_empty_turn"
        assert len(seen_by_upstream(simulator, run)) == 1


def test_two_retries_then_the_explicit_error_in_bounded_time(proxy, simulator):
    header, run = sim_header("empty:9")
    started = time.monotonic()
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, timeout=10)
    with client, pytest.raises(openai.APIError, match="without an answer"):
        stream = client.chat.completions.create(
            model="kimi-k2-thinking",
            messages=[{"role": "user", "content": "read /w/a.txt"}],
            tools=TOOLS,
            stream=True,
            extra_headers={"x-kimi-sim": header},
        )
        for _ in stream:
            pass
    assert time.monotonic() - started < 3  # backoff 0.1 s base: at most 0.1 + 0.2 s of waiting
    assert len(seen_by_upstream(simulator, run)) == 3


def test_a_client_that_leaves_cancels_the_retry(simulator, tmp_path):
    options = {**OPTIONS, "kimi_retry_backoff": "3", "kimi_retries": 1}
    with proxied(simulator, tmp_path, options, save_flows=False) as proxy:
        header, run = sim_header("status:503:1")
        # full jitter may pick a short wait: a slow enough backoff is very likely, retry a few times
        for _ in range(5):
            header, run = sim_header("status:503:1")
            thread = threading.Thread(target=lambda h=header: _post_quietly(proxy.url, h, 0.3))
            thread.start()
            thread.join()
            time.sleep(3.5)
            if len(seen_by_upstream(simulator, run)) == 1:
                break
        assert len(seen_by_upstream(simulator, run)) == 1
        assert any("retry cancelled, the client left" in line for line in proxy.lines)


def _post_quietly(url: str, header: str, timeout: float) -> None:
    with contextlib.suppress(httpx.HTTPError):
        post(url, header, True, timeout=timeout)


def test_every_attempt_is_on_the_flow_and_in_the_capture(proxy, simulator):
    header, run = sim_header("reasoning-only:1", "vllm")
    assert post(proxy.url, header, True).status_code == 200
    flows = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not flows:
        flows = [
            f
            for path in proxy.capture_files()
            for f in proxy.read_flows(path)
            if f"run={run}" in f.request.headers.get("x-kimi-sim", "")
        ]
        time.sleep(0.1)
    assert len(flows) == 1
    record = flows[0].metadata["kimiwire"]
    attempts = record["attempts"]
    assert [(a["attempt"], a["why"], a["outcome"], a["status"]) for a in attempts] == [
        (1, "first", "reasoning_only", 200),
        (2, "reasoning_only", "answered", 200),
    ]
    assert b'"reasoning"' in attempts[0]["body"] and b"tool_calls" not in attempts[0]["body"]
    assert b'"tool_calls"' in attempts[1]["body"] and attempts[1]["bytes"] == len(attempts[1]["body"])
    assert record["ending"] == "retried"
    assert b"/w/a.txt" in flows[0].response.content  # the answering attempt's raw body
    assert delivered_body(flows[0]).count(b"[DONE]") == 1


def test_retries_sent_non_streamed_reach_a_streaming_client_as_sse(simulator, tmp_path):
    """vllm#54701: the streamed turn loses its calls, the same request non-streamed has them."""
    with proxied(simulator, tmp_path, {**OPTIONS, "kimi_retry_stream": "false"}, save_flows=False) as proxy:
        header, run = sim_header("empty-tool-arrays:1", "vllm")
        events = sse_chunks(post(proxy.url, header, True).content)
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert assembled_calls(chunks) == [(0, "functions.read:0", "read", '{"path":"/w/a.txt"}')]
        first = next(tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls") or [])
        assert first["function"]["arguments"] == ""  # as OpenAI streams a call
        assert events[-1] == b"[DONE]" and len({c["id"] for c in chunks}) == 1
        assert sum(1 for c in chunks for ch in c["choices"] if "role" in ch["delta"]) == 1
        requests = seen_by_upstream(simulator, run)
        assert [r["body"]["stream"] for r in requests] == [True, False]


def test_an_upstream_that_stays_down_gets_the_502_after_the_retries_naming_no_address(tmp_path):
    port = free_port()  # nothing listens there
    with Mitmdump(f"http://127.0.0.1:{port}", tmp_path, OPTIONS) as proxy:
        started = time.monotonic()
        response = post(proxy.url, sim_header("none")[0], False)
        elapsed = time.monotonic() - started
    message = response.json()["error"]["message"]
    # kimi_error_names_upstream is off by default: clients need not learn the network behind the proxy.
    assert response.status_code == 502 and "the upstream" in message and str(port) not in message
    assert elapsed < 2  # two backoffs of at most 0.1 and 0.2 s
    [flow] = proxy.read_flows()
    record = flow.metadata["kimiwire"]
    assert [a["outcome"] for a in record["attempts"]] == ["connect"] * 3
    assert record["ending"] == "retries_exhausted:connect"


def test_a_client_that_leaves_mid_attempt_closes_the_upstream_request(tmp_path):
    role = (
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    )
    stop = b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'

    def respond(request):
        if len(upstream.requests) == 1:
            return sse_reply([role, stop, b"data: [DONE]\n\n"])  # an empty turn: retried
        return sse_reply([role, *[b": ping\n\n"] * 60], gap=0.1)  # a slow second attempt (6 s)

    with proxied(respond, tmp_path, OPTIONS) as proxy:
        upstream = proxy.upstream
        body = {"model": "kimi-k2-thinking", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=5) as response:
            started = time.monotonic()
            for _ in response.iter_raw():
                if time.monotonic() - started > 1:
                    break  # leave while the second attempt streams
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and upstream.server._connections:
            time.sleep(0.05)
        assert not upstream.server._connections  # the proxy closed the second attempt's request
        assert len(upstream.requests) == 2
        assert any("retry cancelled, the client left" in line for line in proxy.lines)


def test_no_headers_in_time_is_retried_then_the_504(proxy, simulator):
    header, run = sim_header("slow-first-byte:30")
    started = time.monotonic()
    response = post(proxy.url, header, False)
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"]["type"] == "upstream_timeout"
    assert len(seen_by_upstream(simulator, run)) == 3
    assert 3 * 1.5 <= elapsed < 3 * 1.5 + 2  # three first-byte timeouts, two short backoffs


@pytest.mark.parametrize("fault", ["status:429:1", "status:503:2"])
def test_a_status_retry_of_a_streamed_request_streams_as_a_first_time_success(proxy, simulator, fault):
    """The client gets `200 OK` event-stream headers at once (no content-length), then the retry's
    events as they come; the record describes the answering attempt and what the client got."""
    header, run = sim_header(fault + ", delay=0.15")
    body = {"model": "kimi-k2-thinking", "messages": [{"role": "user", "content": "read /w/a.txt"}], "tools": TOOLS}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", json={**body, "stream": True}, headers={"x-kimi-sim": header}
    ) as response:
        headers_at = time.monotonic() - started
        assert (response.status_code, response.reason_phrase) == (200, "OK")
        assert "content-length" not in response.headers
        assert response.headers["content-type"].startswith("text/event-stream")
        reads = [(time.monotonic() - started, piece) for piece in response.iter_raw()]
    events = sse_chunks(b"".join(piece for _, piece in reads))
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1 and b"error" not in b"".join(events)
    assert reads[-1][0] - headers_at > 0.5  # the answer streamed in after the headers (0.15 s between events)
    assert len([at for at, _ in reads if at < reads[-1][0] - 0.3]) > 1  # ...in several pieces
    failing = int(fault.rsplit(":", 1)[1])
    assert len(seen_by_upstream(simulator, run)) == failing + 1
    [flow] = captured(proxy, run)
    record = flow.metadata["kimiwire"]
    code = int(fault.split(":")[1])
    assert [(a["why"], a["status"], a["outcome"]) for a in record["attempts"]] == [
        ("first", code, "status"),
        *[("status", code, "status")] * (failing - 1),
        ("status", 200, "answered"),
    ]
    assert record["ending"] == "retried" and "retried=" in flow.comment
    assert flow.response.content == record["attempts"][-1]["body"]  # the answering attempt's raw body
    assert delivered_body(flow).count(b"[DONE]") == 1 and delivered_body(flow) != flow.response.content


def captured(proxy, run: str) -> list:
    flows = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not flows:
        flows = [
            f
            for path in proxy.capture_files()
            for f in proxy.read_flows(path)
            if f"run={run}" in f.request.headers.get("x-kimi-sim", "")
        ]
        time.sleep(0.1)
    return flows
