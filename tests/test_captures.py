"""Captures, offline replay, mitmproxy replay and inspection (issue 5)."""

import os
import stat
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.contentview import register
from mitmproxy import contentviews
from mitmproxy.test import taddons

from tests.support import streams
from tests.support.conversations import assistant, body, call, tool, user
from tests.support.mitm import ROOT, Mitmdump, free_port
from tests.support.streams import EXEC_ARGS, READ_ARGS
from tests.support.upstream import RecordingUpstream, sse_reply

TWO = [("read", READ_ARGS), ("exec", EXEC_ARGS)]
SECRETS = {
    "authorization": "Bearer sk-very-secret-1",
    "x-api-key": "very-secret-2",
    "cookie": "s=very-secret-3",
    "api-key": "very-secret-4",
}
REQUEST = body(
    [
        user("read"),
        assistant(call("functionsread0", "read"), reasoning_content="old thoughts"),
        tool("functionsread0", "A"),
        assistant(content="ok"),
        user("now both"),
    ],
)


def upstream_reply(request):
    scenario = request.headers.get("x-scenario", "interleaved")
    if scenario == "stall":
        return sse_reply(streams.interleaved(TWO).events[:3], hold_open=4)
    reply = sse_reply(streams.interleaved(TWO).events)
    reply.headers["set-cookie"] = "upstream=very-secret-5"
    return reply


@pytest.fixture(scope="module")
def upstream():
    with RecordingUpstream(upstream_reply) as up:
        yield up


@pytest.fixture(scope="module")
def live(upstream, tmp_path_factory):
    """One live run: two flows through mitmdump, then the capture it left."""
    tmp = tmp_path_factory.mktemp("live")
    with Mitmdump(upstream.url, tmp, {"kimi_idle_timeout": 1}) as proxy:
        raw_request = orjson.dumps(REQUEST)
        with httpx.Client(timeout=10) as client:
            first = client.post(
                f"{proxy.url}/v1/chat/completions",
                content=raw_request,
                headers={"content-type": "application/json", **SECRETS},
            )
            second = client.post(
                f"{proxy.url}/v1/chat/completions",
                content=raw_request,
                headers={"content-type": "application/json", "x-scenario": "stall"},
            )
    [capture] = proxy.capture_files()
    return {
        "proxy": proxy,
        "capture": capture,
        "raw_request": raw_request,
        "delivered": [first.content, second.content],
    }


def replay(*args):
    return subprocess.run(
        [str(ROOT / "scripts" / "replay"), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_capture_round_trip_is_byte_exact(live, upstream):
    flows = live["proxy"].read_flows(live["capture"])
    assert len(flows) == 2
    flow = flows[0]
    assert flow.request.content == live["raw_request"]  # what the client sent, before repair
    assert flow.response.content == streams.interleaved(TWO).body()  # what the upstream sent
    record = flow.metadata["kimiwire"]
    assert record["delivered"] == live["delivered"][0]  # what the client received
    assert record["upstream_request"] == upstream.requests[0].body  # what the upstream received
    assert record["policy"]["flavor"] == "selfhosted"
    assert {"ids.call", "ids.result", "reasoning.stripped", "stream.tool_call_joined"} <= {
        r["kind"] for r in record["repairs"]
    }
    assert record["timings"]["first_byte"] <= record["timings"]["last_byte"]
    assert flow.response.headers["transfer-encoding"] == "chunked"  # the upstream's own headers


def test_no_secret_reaches_the_capture(live):
    data = live["capture"].read_bytes()
    for n in range(1, 6):
        assert f"very-secret-{n}".encode() not in data
    flow = live["proxy"].read_flows(live["capture"])[0]
    assert flow.request.headers["authorization"].startswith("[redacted")
    assert flow.response.headers["set-cookie"].startswith("[redacted")


def test_capture_permissions(live):
    assert stat.S_IMODE(os.stat(live["capture"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(live["capture"].parent).st_mode) == 0o700


def test_a_stream_cut_by_the_proxy_is_saved_with_its_ending(live):
    flow = live["proxy"].read_flows(live["capture"])[1]
    record = flow.metadata["kimiwire"]
    assert record["ending"] == "idle_timeout"
    assert record["delivered"] == live["delivered"][1]
    assert b"upstream_timeout" in record["delivered"]


def test_capture_is_readable_by_mitmdump(live):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mitmproxy.tools.main",
            "mitmdump",
            "-nr",
            str(live["capture"]),
            "--set",
            "flow_detail=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 or "chat/completions" not in done.stdout:  # the module entry may differ: use the script
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "mitmdump"), "-nr", str(live["capture"])],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0 and done.stdout.count("chat/completions") == 2


def test_replay_reports_no_difference_with_the_recorded_policy(live):
    done = replay(live["capture"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: 2 flows compared, 0 differ" in done.stdout


def test_replay_reports_a_policy_change(live, tmp_path):
    done = replay(live["capture"], "--tool-ids", "keep", "--reasoning", "keep", "-w", tmp_path / "rerun.mitm")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DIFFERS" in done.stdout
    assert "functions.read:0 -> functionsread0" in done.stdout
    rerun = live["proxy"].read_flows(tmp_path / "rerun.mitm")
    assert b"old thoughts" in rerun[0].metadata["kimiwire"]["upstream_request"]


def test_replay_bad_input(tmp_path):
    missing = replay(tmp_path / "nope.mitm")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_server_replay_reproduces_the_live_delivered_body(live, tmp_path):
    # The capture stands in for the upstream: nothing listens at the reverse target.
    options = {
        "server_replay_ignore_content": "true",
        "server_replay_ignore_host": "true",
        "server_replay_ignore_port": "true",
        "keepserving": "true",
        "server_replay_extra": "404",
    }
    with Mitmdump("http://127.0.0.1:9", tmp_path, options, extra_args=["-S", str(live["capture"])]) as proxy:
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            content=live["raw_request"],
            headers={"content-type": "application/json"},
            timeout=10,
        )
    assert r.status_code == 200
    assert r.content == live["delivered"][0]


def test_client_replay_resends_the_captured_requests(live, upstream, tmp_path):
    before = len(upstream.requests)
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "mitmdump"),
            "-n",
            "-C",
            str(live["capture"]),
            "-s",
            str(ROOT / "addons" / "kimi.py"),
            "--set",
            f"confdir={tmp_path}",
            "--set",
            f"kimi_capture_dir={tmp_path / 'c'}",
            "--set",
            "kimi_idle_timeout=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    resent = upstream.requests[before:]
    assert len(resent) == 2
    assert resent[0].body == upstream.requests[0].body  # repaired again, the same way


def test_contentviews_render_the_captured_flows(live):
    register()
    flow = live["proxy"].read_flows(live["capture"])[0]
    with taddons.context(KimiWire()):
        result = contentviews.prettify_message(flow.response, flow)
        view, text = result.view_name, result.text
        assert view == "Kimi Response"
        assert "as the upstream sent it" in text and "as the client received it" in text
        assert "tool call [0] read id=functions.read:1" in text
        assert '"path": "/tmp/probe/hello.txt"' in text
        assert "finish_reason: tool_calls" in text and "stream.tool_call_joined" in text
        result = contentviews.prettify_message(flow.request, flow)
        view, text = result.view_name, result.text
        assert view == "Kimi Request"
        assert "call functionsread0  (rewritten to functions.read:0) read" in text
        assert "answers functionsread0  (rewritten to functions.read:0)" in text


def test_capture_write_error_is_logged_once_and_flows_go_on(upstream, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with Mitmdump(upstream.url, tmp_path, {"kimi_capture_dir": str(blocker / "sub")}) as proxy:
        for _ in range(2):
            r = httpx.post(f"{proxy.url}/v1/chat/completions", json=REQUEST, timeout=10)
            assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
    assert proxy.output.count("cannot write captures") == 1


def test_client_disconnect_is_captured(upstream, tmp_path):
    with Mitmdump(upstream.url, tmp_path, {"kimi_idle_timeout": 5}) as proxy:
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST", f"{proxy.url}/v1/chat/completions", json=REQUEST, headers={"x-scenario": "stall"}
            ) as r,
        ):
            next(r.iter_raw())
        time.sleep(0.5)
    [capture] = proxy.capture_files()
    [flow] = proxy.read_flows(capture)
    assert flow.metadata["kimiwire"]["ending"] == "client_disconnected"
    assert flow.response.content == b"".join(streams.interleaved(TWO).events[:3])


def test_stats_command():
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        kw.counts.update({"flows.chat": 2, "ids.call": 3, "bytes.upstream": 10, "ending.natural": 2})
        stats = orjson.loads(tctx.command(kw.stats))
    assert stats["flows"] == 2 and stats["repairs"] == {"ids.call": 3} and stats["bytes_from_upstream"] == 10
    assert stats["endings"] == {"natural": 2}


def test_captures_off_when_the_option_is_empty(upstream, tmp_path):
    with Mitmdump(upstream.url, tmp_path, {"kimi_capture_dir": ""}) as proxy:
        httpx.post(f"{proxy.url}/v1/chat/completions", json=REQUEST, timeout=10)
    assert not proxy.capture_files() and not (tmp_path / "captures").exists()


def test_repaired_flows_are_found_by_mitmproxy_filters(live):
    from mitmproxy import flowfilter

    flow = live["proxy"].read_flows(live["capture"])[0]
    assert flowfilter.match("~marked", flow)
    assert flowfilter.match("~comment ids", flow)
    assert flowfilter.match("~comment stream.tool_call_joined", flow)


def test_a_killed_proxy_leaves_a_readable_capture(upstream, tmp_path):
    proxy = Mitmdump(upstream.url, tmp_path)
    proxy.__enter__()
    try:
        for _ in range(2):
            r = httpx.post(f"{proxy.url}/v1/chat/completions", json=REQUEST, timeout=10)
            assert r.status_code == 200
    finally:
        proxy._proc.kill()  # SIGKILL: no shutdown hook runs
        proxy._proc.wait(10)
    [capture] = proxy.capture_files()
    flows = proxy.read_flows(capture)
    assert len(flows) == 2 and all(f.metadata["kimiwire"]["delivered"].endswith(b"[DONE]\n\n") for f in flows)


def test_mitmweb_shows_captured_flows_with_the_kimi_views(live, tmp_path):
    web_port, proxy_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "mitmweb"),
            "-r",
            str(live["capture"]),
            "-s",
            str(ROOT / "addons" / "kimi.py"),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(proxy_port),
            "--mode",
            "reverse:http://127.0.0.1:9",
            "--set",
            "web_open_browser=false",
            "--set",
            "web_host=127.0.0.1",
            "--set",
            f"web_port={web_port}",
            "--set",
            "web_password=test-pw",
            "--set",
            f"confdir={tmp_path}",
            "--set",
            "kimi_capture_dir=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    headers = {"authorization": "Bearer test-pw"}
    try:
        flows = []
        for _ in range(100):
            try:
                flows = httpx.get(f"http://127.0.0.1:{web_port}/flows", headers=headers, timeout=2).json()
                if len(flows) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert len(flows) == 2
        assert flows[0]["marked"] and "ids.call=1" in flows[0]["comment"]
        base = f"http://127.0.0.1:{web_port}/flows/{flows[0]['id']}"
        response = httpx.get(f"{base}/response/content/auto.json", headers=headers, timeout=5).json()
        assert response["view_name"] == "Kimi Response"
        assert "tool call [1] exec id=functions.exec:2" in response["text"]
        request = httpx.get(f"{base}/request/content/auto.json", headers=headers, timeout=5).json()
        assert request["view_name"] == "Kimi Request"
        assert "(rewritten to functions.read:0)" in request["text"]
    finally:
        proc.terminate()
        proc.wait(15)
