"""Every client stream ends, cleanly and in bounded time, whatever the upstream does.

A fault-injecting upstream drives each case through mitmdump with the addon and short timeouts.
"""

import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx
import openai
import orjson
import pytest
from kimiwire.mitm import proxy_internals
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT

from tests.support.endings import FIRST_BYTE, GRACE, IDLE, OPTIONS, REQUEST
from tests.support.mitm import Mitmdump
from tests.support.proxied import proxied
from tests.support.streams import READ_ARGS, Stream, tool_delta
from tests.support.upstream import Reply, json_reply, sse_reply


def text_events(n=3):
    s = Stream().chunk({"role": "assistant", "content": ""})
    for i in range(n):
        s.chunk({"content": f"tok{i} "})
    return s


SCENARIOS = {
    "normal": lambda: sse_reply(text_events().chunk({}, "stop").done().events),
    "done_open": lambda: sse_reply(text_events().chunk({}, "stop").done().events, hold_open=30),
    "finish_then_quiet": lambda: sse_reply(
        text_events().chunk(tool_delta(0, "functions.read:0", "read", READ_ARGS)).chunk({}, "tool_calls").events,
        hold_open=30,
    ),
    "no_done_body_ends": lambda: sse_reply(text_events().chunk({}, "stop").events),
    "stall": lambda: sse_reply(text_events().events, hold_open=30),
    "stall_with_keepalives": lambda: sse_reply([*text_events().events, *[b": ping\n\n"] * 12], gap=0.25, hold_open=30),
    "stall_mid_event": lambda: sse_reply([*text_events().events, b'data: {"choices": [{"ind'], hold_open=30),
    "stall_with_held_call": lambda: sse_reply(
        text_events().chunk(tool_delta(0, "functions.read:0", "read", READ_ARGS)).events, hold_open=30
    ),
    "slow_but_alive": lambda: sse_reply(text_events().chunk({}, "stop").done().events, gap=0.5),
    "close_delimited_done_open": lambda: sse_reply(
        text_events().chunk({}, "stop").done().events, framing="close", hold_open=30
    ),
    "content_length_stall": lambda: Reply(
        headers={"content-type": "text/event-stream"},
        pieces=text_events().events,
        framing="length",
        content_length=100_000,
        hold_open=30,
    ),
    "reset_mid_stream": lambda: sse_reply([*text_events().events, b"data: never\n\n"], reset_after=4),
    "slow_first_byte": lambda: sse_reply(text_events().chunk({}, "stop").done().events, header_delay=30),
    "headers_then_nothing": lambda: sse_reply([], hold_open=30),
    "first_event_slow": lambda: sse_reply(text_events().chunk({}, "stop").done().events, gap=0.0, first_gap=1.8),
    "rate_limited": lambda: json_reply({"error": {"message": "slow down", "type": "rate_limit", "code": 429}}, 429),
}


def respond(request):
    return SCENARIOS[request.headers.get("x-scenario", "normal")]()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with proxied(respond, tmp_path_factory.mktemp("endings"), OPTIONS) as p:
        yield p


@dataclass
class Fetched:
    response: httpx.Response
    body: bytes
    elapsed: float


def fetch(proxy, scenario, timeout=10.0) -> Fetched:
    start = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        r = client.post(f"{proxy.url}/v1/chat/completions", json=REQUEST, headers={"x-scenario": scenario})
        body = r.content  # raises if the body did not end cleanly
    return Fetched(r, body, time.monotonic() - start)


def expected_repair(events: list[bytes]) -> bytes:
    repairer = StreamRepairer(RequestFacts(0, {}, False, True), Policy.build(Flavor.SELFHOSTED))
    return b"".join([*repairer.feed(b"".join(events)), *repairer.end()])


def datas(body: bytes) -> list[bytes]:
    return re.findall(rb"data: (.*)\n\n", body)


def test_internals_fit_this_mitmproxy():
    # Fails loudly when an upgrade of mitmproxy no longer has what the stream ending relies on.
    assert proxy_internals.problems() == []


def test_normal_stream_is_untouched(proxy):
    got = fetch(proxy, "normal")
    assert got.body == text_events().chunk({}, "stop").done().body()
    assert got.elapsed < 2


def test_done_with_body_left_open_ends_after_grace(proxy):
    got = fetch(proxy, "done_open")
    assert got.body == text_events().chunk({}, "stop").done().body()
    assert GRACE <= got.elapsed < GRACE + 1.5


def test_finish_then_quiet_gets_calls_finish_and_done(proxy):
    got = fetch(proxy, "finish_then_quiet")
    events = text_events().chunk(tool_delta(0, "functions.read:0", "read", READ_ARGS)).chunk({}, "tool_calls").events
    assert got.body == expected_repair(events)
    assert datas(got.body)[-1] == b"[DONE]" and b'"finish_reason":"tool_calls"' in datas(got.body)[-2]
    assert GRACE <= got.elapsed < GRACE + 1.5


def test_body_ending_without_done_gets_done(proxy):
    got = fetch(proxy, "no_done_body_ends")
    assert got.body == text_events().chunk({}, "stop").done().body()


@pytest.mark.parametrize("scenario", ["stall", "stall_with_keepalives", "stall_mid_event", "content_length_stall"])
def test_idle_upstream_gets_error_event_done_and_clean_end(proxy, scenario):
    got = fetch(proxy, scenario)
    sent = text_events().events
    prefix = b"".join(sent)
    assert got.body.startswith(prefix)
    tail = datas(got.body[len(prefix) :].replace(b": ping\n\n", b""))
    error = orjson.loads(tail[0])["error"]
    assert error["type"] == "upstream_timeout" and error["code"] == "upstream_idle_timeout"
    assert tail[1:] == [b"[DONE]"]
    assert IDLE <= got.elapsed < IDLE + 2.0


def test_idle_end_delivers_held_complete_call_first(proxy):
    got = fetch(proxy, "stall_with_held_call")
    tail = datas(got.body)[-4:]  # the call's first delta, its arguments, the error, [DONE]
    assert b'"name":"read"' in tail[0] and b'"arguments":""' in tail[0] and b'"arguments":"{' in tail[1]
    assert b"upstream_timeout" in tail[2] and tail[3] == b"[DONE]"


def test_slow_stream_below_the_idle_timeout_is_not_cut(proxy):
    got = fetch(proxy, "slow_but_alive")
    assert got.body == text_events().chunk({}, "stop").done().body()
    assert got.elapsed > 2.0  # 6 gaps of 0.5 s: longer than the idle timeout in total


def test_close_delimited_done_open(proxy):
    got = fetch(proxy, "close_delimited_done_open")
    assert got.body == text_events().chunk({}, "stop").done().body()
    assert got.elapsed < GRACE + 1.5


def test_reset_mid_stream_gets_error_event_and_clean_end(proxy):
    got = fetch(proxy, "reset_mid_stream")
    tail = datas(got.body)[-2:]
    assert orjson.loads(tail[0])["error"]["type"] == "upstream_error"
    assert tail[1] == b"[DONE]"
    assert got.elapsed < 3
    assert not [line for line in proxy.lines if proxy_internals.FALLBACK in line]


def test_headers_then_no_event_uses_the_first_event_timeout(tmp_path):
    # Prefill can take long after the headers: before the first event its own (longer) timeout
    # applies, not the idle one; the client hears a comment meanwhile.
    options = {**OPTIONS, "kimi_idle_timeout": 1, "kimi_first_byte_timeout": 1, "kimi_first_event_timeout": 2.5}
    with proxied(respond, tmp_path, {**options, "kimi_keepalive": 0.5}) as p:
        slow = fetch(p, "first_event_slow")
        silent = fetch(p, "headers_then_nothing")
    comment = KEEPALIVE_COMMENT
    assert slow.body.replace(comment, b"") == text_events().chunk({}, "stop").done().body()  # 1.8 s > idle
    assert slow.body.startswith(comment)  # the client heard something during the prefill
    assert silent.body.count(comment) >= 3
    error = orjson.loads(datas(silent.body)[0])["error"]
    assert error["code"] == "upstream_first_event_timeout" and datas(silent.body)[1:] == [b"[DONE]"]
    assert 2.5 <= silent.elapsed < 4.5


def test_slow_first_byte_gets_504_json(proxy):
    got = fetch(proxy, "slow_first_byte")
    assert got.response.status_code == 504
    assert got.response.headers["content-type"] == "application/json"
    assert got.response.json()["error"]["type"] == "upstream_timeout"
    assert FIRST_BYTE <= got.elapsed < FIRST_BYTE + 1.5


def test_upstream_error_json_passes_through(proxy):
    got = fetch(proxy, "rate_limited")
    assert got.response.status_code == 429 and got.response.json()["error"]["message"] == "slow down"


def test_connection_refused_gets_502_json_naming_no_address(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with Mitmdump(f"http://127.0.0.1:{port}", tmp_path, OPTIONS) as p:
        start = time.monotonic()
        r = httpx.post(f"{p.url}/v1/chat/completions", json=REQUEST, timeout=10)
        elapsed = time.monotonic() - start
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["message"].startswith("kimiwire: the upstream failed before responding")
    assert f"{port}" not in error["message"] and error["type"] == "upstream_error"  # kimi_error_names_upstream off
    assert elapsed < 2
    [flow] = p.read_flows()
    assert flow.metadata["kimiwire"]["error_answer"] == 502  # visible on the flow
    assert flow.metadata["kimiwire"]["ending"] == "upstream_error"
    assert not [line for line in p.lines if proxy_internals.FALLBACK in line]  # answered on its own connection


@pytest.mark.parametrize("scenario,error", [("stall", "upstream_idle_timeout"), ("reset_mid_stream", None)])
def test_openai_sdk_raises_api_error_instead_of_hanging(proxy, scenario, error):
    start = time.monotonic()
    with (
        openai.OpenAI(
            base_url=f"{proxy.url}/v1",
            api_key="sk",
            max_retries=0,
            timeout=10,
            default_headers={"x-scenario": scenario},
        ) as client,
        pytest.raises(openai.APIError) as raised,
    ):
        for _ in client.chat.completions.create(**REQUEST):
            pass
    assert time.monotonic() - start < IDLE + 2
    if error:
        assert error in str(raised.value.body) or error in str(raised.value)


@pytest.mark.parametrize("scenario", ["done_open", "finish_then_quiet", "close_delimited_done_open"])
def test_openai_sdk_finishes_when_the_upstream_keeps_the_body_open(proxy, scenario):
    start = time.monotonic()
    with openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key="sk", max_retries=0, timeout=10, default_headers={"x-scenario": scenario}
    ) as client:
        chunks = list(client.chat.completions.create(**REQUEST))
    assert chunks and time.monotonic() - start < GRACE + 1.5


def test_faulty_streams_do_not_disturb_healthy_ones_and_nothing_leaks(tmp_path):
    results: dict[str, list] = {}

    def run(name, scenario):
        try:
            with httpx.Client(timeout=15) as client:
                t = time.monotonic()
                r = client.post(f"{p.url}/v1/chat/completions", json=REQUEST, headers={"x-scenario": scenario})
                results.setdefault(scenario, []).append((r.status_code, r.content, time.monotonic() - t))
        except Exception as exc:  # pragma: no cover - reported by the assertions below
            results.setdefault(scenario, []).append(("error", repr(exc), 0))

    plan = ["normal", "stall", "done_open", "reset_mid_stream", "slow_first_byte"] * 3
    with proxied(respond, tmp_path, OPTIONS) as p:
        threads = [threading.Thread(target=run, args=(f"t{i}", s)) for i, s in enumerate(plan)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert all(not t.is_alive() for t in threads)
    healthy = text_events().chunk({}, "stop").done().body()
    assert [(s, c) for s, c, _ in results["normal"]] == [(200, healthy)] * 3
    assert all(e < 2 for _, _, e in results["normal"])
    assert all(c.endswith(b"data: [DONE]\n\n") for _, c, _ in results["stall"] + results["reset_mid_stream"])
    assert [s for s, _, _ in results["slow_first_byte"]] == [504] * 3
    stats = re.search(r"kimiwire stats: (.*)", p.output).group(1)
    assert "active_tasks=0" in stats and "pending_error_answers=0" in stats
    assert "ending.idle_timeout=3" in stats and "ending.first_byte_timeout=3" in stats


def test_client_disconnect_releases_everything_and_is_recorded(tmp_path):
    with proxied(respond, tmp_path, OPTIONS) as p:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{p.url}/v1/chat/completions", json=REQUEST, headers={"x-scenario": "stall"}) as r,
        ):
            next(r.iter_raw())  # the first bytes arrived; the client gives up
        time.sleep(0.5)
    [flow] = p.read_flows()
    assert flow.metadata["kimiwire"]["ending"] == "client_disconnected"
    assert "active_tasks=0" in re.search(r"kimiwire stats: (.*)", p.output).group(1)


def _post_on(client: httpx.Client, proxy, scenario: str) -> tuple[httpx.Response, bytes, tuple]:
    """One request on a pooled client: the response, its body and the client's end of the connection."""
    with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=REQUEST, headers={"x-scenario": scenario}) as r:
        local = r.extensions["network_stream"].get_extra_info("client_addr")
        return r, r.read(), local


@pytest.mark.parametrize("scenario", ["stall", "stall_mid_event", "reset_mid_stream", "slow_first_byte"])
def test_a_pooled_client_sends_its_next_request_on_the_same_connection(proxy, scenario):
    # A keep-alive client (httpx, which the OpenAI SDK uses; undici pools the same way) sends its next
    # request on the connection at once: after an answer the proxy made itself (idle timeout, mid-stream
    # failure, first-byte timeout) that connection must serve it, not reset it.
    with httpx.Client(timeout=10) as client:
        first, first_body, first_local = _post_on(client, proxy, scenario)
        second, second_body, second_local = _post_on(client, proxy, "normal")
    if first.status_code == 200:
        assert first_body.endswith(b"data: [DONE]\n\n") and b'"error"' in first_body
    else:
        assert first.status_code == 504 and first.headers.get("connection") is None
    assert second.status_code == 200 and second_body == text_events().chunk({}, "stop").done().body()
    assert second_local == first_local  # the same connection: kept open, and no reset on it


def test_openai_sdk_next_request_after_a_stream_the_proxy_ended(proxy):
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk", max_retries=0, timeout=10) as client:
        for _ in range(3):
            with pytest.raises(openai.APIError) as raised:
                for _ in client.chat.completions.create(**REQUEST, extra_headers={"x-scenario": "reset_mid_stream"}):
                    pass
            assert not isinstance(raised.value, openai.APIConnectionError)  # the error event, not a reset
            chunks = list(client.chat.completions.create(**REQUEST, extra_headers={"x-scenario": "normal"}))
            assert chunks[-1].choices[0].finish_reason == "stop"


_NODE_FETCH_TWICE = """
const [url, scenario, body] = process.argv.slice(1);
const post = (name) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json", "x-scenario": name }, body });
const first = await (await post(scenario)).text();
const second = await post("normal");
console.log(JSON.stringify({ first, status: second.status, second: await second.text() }));
"""


@pytest.mark.parametrize("scenario", ["stall", "reset_mid_stream", "slow_first_byte"])
def test_node_fetch_sends_its_next_request_after_an_answer_the_proxy_ended(proxy, scenario):
    # Node's fetch (undici) keeps its connections and sends the next request on one at once.
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    url, body = f"{proxy.url}/v1/chat/completions", orjson.dumps(REQUEST).decode()
    done = subprocess.run(
        [node, "--input-type=module", "-e", _NODE_FETCH_TWICE, url, scenario, body],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr  # a reset next request: "TypeError: fetch failed"
    got = orjson.loads(done.stdout)
    assert "upstream" in got["first"]  # the error event, or the 504's JSON body
    assert got["status"] == 200 and got["second"] == text_events().chunk({}, "stop").done().body().decode()
