"""Captures, offline replay, mitmproxy replay and inspection."""

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.capture import CaptureFile, delivered_body, upstream_request_body
from kimiwire.mitm.contentview import register
from mitmproxy import contentviews
from mitmproxy.test import taddons

from tests.support import streams
from tests.support.conversations import assistant, body, call, tool, user
from tests.support.mitm import ROOT, Mitmdump, free_port
from tests.support.proxied import proxied
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
    # the stalled stream stops inside an open call: the tool idle deadline is the one that applies
    with proxied(upstream, tmp, {"kimi_idle_timeout": 1, "kimi_tool_idle_timeout": 1}) as proxy:
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
    assert delivered_body(flow) == live["delivered"][0]  # what the client received
    assert upstream_request_body(flow) == upstream.requests[0].body  # what the upstream received
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
    assert record["delivered"] == live["delivered"][1]  # (differs from the upstream's: stored)
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
    not_flows = tmp_path / "notes.txt"
    not_flows.write_text("these are not flows\n")
    garbage = replay(not_flows)
    assert garbage.returncode == 2 and "not a mitmproxy flow file" in garbage.stderr
    assert "Traceback" not in garbage.stderr
    empty = tmp_path / "empty.mitm"
    empty.write_bytes(b"")
    assert replay(empty).returncode == 2
    assert replay(tmp_path).returncode == 2  # a folder


def test_replay_reads_up_to_the_last_whole_record(live, tmp_path):
    data = live["capture"].read_bytes()
    cut = tmp_path / "cut.mitm"
    cut.write_bytes(data + data[: len(data) // 3])  # two whole flows, then a third cut short
    done = replay(cut)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: 2 flows compared, 0 differ" in done.stdout
    assert f"read up to byte {len(data)}; then a record cut short" in done.stderr


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


def mitmdump_exit(upstream, tmp_path, options):
    """Start mitmdump expecting it to refuse to start: (exit status, output)."""
    proxy = Mitmdump(upstream.url, tmp_path, options, save_flows=False)
    done = subprocess.run(proxy.args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr


def test_an_unwritable_capture_folder_stops_the_start(upstream, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    status, output = mitmdump_exit(upstream, tmp_path, {"kimi_capture_dir": str(blocker / "sub")})
    assert status != 0
    assert f"cannot write captures in {blocker / 'sub'}" in output and "kimi_capture_required=false" in output


def test_an_unwritable_capture_folder_can_be_a_warning(upstream, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    options = {"kimi_capture_dir": str(blocker / "sub"), "kimi_capture_required": "false"}
    with proxied(upstream, tmp_path, options) as proxy:
        for _ in range(2):
            r = httpx.post(f"{proxy.url}/v1/chat/completions", json=REQUEST, timeout=10)
            assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
    start = proxy.output.index("cannot write captures in")
    assert "running on" in proxy.output[start:]
    # repeated at shutdown, with the count
    assert f"0 flows captured in {blocker / 'sub'}" in proxy.output
    assert "2 flows LOST" in proxy.output


def test_stats_report_an_unwritable_capture_folder(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_required=False, kimi_capture_dir=str(blocker / "sub"))
        kw.capture.write({"x": 1})
        stats = tctx.command(kw.stats)
    assert stats["capture_lost"] == 1 and "sub" in stats["capture_error"]


def test_the_repository_capture_folder_is_made_private(tmp_path):
    folder = tmp_path / "captures"
    folder.mkdir(mode=0o755)
    (folder / ".gitkeep").write_text("")
    (folder / "README.md").write_text("")
    os.chmod(folder, 0o755)  # as git checks it out
    CaptureFile(folder).prepare()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    # a folder of the user's that holds other things is left alone (its files are 0600)
    own = tmp_path / "shared"
    own.mkdir()
    (own / "notes.txt").write_text("")
    os.chmod(own, 0o755)
    CaptureFile(own).prepare()
    assert stat.S_IMODE(os.stat(own).st_mode) == 0o755


class FillingDisk:
    """A writer like os.write on a disk that fills up: the first `fail` writes put half their
    bytes down, then fail with ENOSPC."""

    def __init__(self, fail: int) -> None:
        self.fail = fail

    def __call__(self, fd: int, data: bytes) -> int:
        if self.fail:
            self.fail -= 1
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def test_a_failed_write_leaves_whole_records_and_later_flows_are_written(live, tmp_path):
    flows = live["proxy"].read_flows(live["capture"])
    capture = CaptureFile(tmp_path, "c.mitm", write=FillingDisk(fail=0))
    assert capture.write(flows[0].get_state())
    capture._write = FillingDisk(fail=2)
    assert not capture.write(flows[1].get_state()) and not capture.write(flows[1].get_state())
    assert capture.write(flows[1].get_state())  # space again: written
    capture.close()
    read = live["proxy"].read_flows(tmp_path / "c.mitm")
    assert [f.id for f in read] == [flows[0].id, flows[1].id]
    assert capture.flows_written == 2 and capture.flows_lost == 2
    assert "2 flows LOST (last error: OSError: [Errno 28] No space left on device)" in capture.summary()


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root and a kernel that lets this process mount)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder, leave: int) -> None:
    """Fill the disk, except for `leave` bytes."""
    (folder / "gap").write_bytes(b"g" * leave)
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while f.write(b"f" * 4096):
                pass
        except OSError:
            pass
    (folder / "gap").unlink()


def test_a_full_disk_loses_flows_loudly_and_captures_resume(upstream, tmp_path, small_disk):
    folder = small_disk / "captures"
    with proxied(upstream, tmp_path, {"kimi_capture_dir": str(folder)}, save_flows=False) as proxy:
        post = lambda: httpx.post(f"{proxy.url}/v1/chat/completions", json=REQUEST, timeout=10)  # noqa: E731
        assert post().status_code == 200
        [capture] = sorted(folder.glob("kimiwire-*.mitm"))
        one_record = capture.stat().st_size
        fill(small_disk, leave=4096)
        assert one_record > 4096  # so the next record is cut by the full disk
        for _ in range(2):
            assert post().content.endswith(b"data: [DONE]\n\n")  # clients do not notice
        assert capture.stat().st_size == one_record  # the cut record was removed
        (small_disk / "filler").unlink()
        assert post().status_code == 200
    assert "cannot write captures to" in proxy.output and "No space left on device" in proxy.output
    assert "work again (2 flows lost so far)" in proxy.output
    assert "2 flows captured in" in proxy.output and "2 flows LOST" in proxy.output
    assert len(proxy.read_flows(capture)) == 2
    done = replay(capture)
    assert done.returncode == 0 and "summary: 2 flows compared, 0 differ" in done.stdout, done.stdout + done.stderr


def test_client_disconnect_is_captured(upstream, tmp_path):
    with proxied(upstream, tmp_path, {"kimi_idle_timeout": 5}) as proxy:
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
        stats = tctx.command(kw.stats)
    assert stats["flows"] == 2 and stats["repairs"] == {"ids.call": 3} and stats["bytes_from_upstream"] == 10
    assert stats["endings"] == {"natural": 2}


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
    assert len(flows) == 2 and all(delivered_body(f).endswith(b"[DONE]\n\n") for f in flows)


def listening(pid: int) -> list[str]:
    """The TCP addresses a process listens on (`ss -ltnp`)."""
    done = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10)
    return sorted(line.split()[3] for line in done.stdout.splitlines() if f"pid={pid}," in line)


def test_mitmweb_shows_captured_flows_with_the_kimi_views(live, tmp_path):
    """The README's recipe for reading a capture: `mitmweb -n -s addons/kimi.py -r FILE` opens the web UI on
    127.0.0.1 and no proxy at all (plain `-r` would also open a forward proxy on every interface)."""
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to see what mitmweb listens on")
    web_port = free_port()
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "mitmweb"),
            "-n",
            "-s",
            str(ROOT / "addons" / "kimi.py"),
            "-r",
            str(live["capture"]),
            "--set",
            "web_open_browser=false",
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
        for _ in range(300):
            try:
                flows = httpx.get(f"http://127.0.0.1:{web_port}/flows", headers=headers, timeout=2).json()
                if len(flows) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert len(flows) == 2
        assert listening(proc.pid) == [f"127.0.0.1:{web_port}"]
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


_COMMAND = re.compile(r"^(?:\w+=\S+\s+)*(?:\S*/)?(mitmdump|mitmweb)\s")


def command_lines(markdown: str) -> list[str]:
    """mitmdump and mitmweb command lines in a markdown text: code spans and code blocks
    (with backslash continuations joined)."""
    found = [span for span in re.findall(r"`([^`\n]+)`", markdown) if _COMMAND.match(span)]
    for block in re.findall(r"```\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if _COMMAND.match(line.strip()):
                found.append(line.strip())
    return found


@pytest.mark.parametrize("document", ["README.md", "captures/README.md", "docs/captures.md"])
def test_documented_command_lines_listen_on_loopback_only(document):
    lines = command_lines((ROOT / document).read_text())
    assert lines  # the documents do show command lines
    for line in lines:
        words = line.split()
        assert "-n" in words or "--listen-host 127.0.0.1" in line, line
        if "mitmweb" in line and "-n" not in words:
            assert "--web-host 127.0.0.1" in line, line


def test_scripts_listen_on_loopback_only():
    run = (ROOT / "scripts" / "run.py").read_text()  # scripts/run runs it
    assert 'add_argument("--host", default="127.0.0.1"' in run and '"--listen-host", args.host' in run
    for hint in re.findall(r"mitmweb [^)]*", run):
        assert " -n " in hint, hint
    # every other mitmdump a script starts comes from the one launcher, or binds 127.0.0.1 itself
    assert re.search(r'"--listen-host",\s+"127.0.0.1",', (ROOT / "addons" / "kimiwire" / "launch.py").read_text())
    for script in sorted((ROOT / "scripts").glob("*.py")):
        text = script.read_text()
        if "mitmdump" not in text.lower() or not re.search(r"Popen|subprocess\.|Mitmdump\b", text):
            continue  # names mitmdump in words only, starts none
        binds = re.findall(r'"--listen-host",\s+(\S+)', text)
        assert "launch.Mitmdump" in text or "import Mitmdump" in text or binds, script.name
        # run.py binds --host, whose default (checked above) is 127.0.0.1
        assert all(b == '"127.0.0.1",' or (script.name, b) == ("run.py", "args.host,") for b in binds), (
            script.name,
            binds,
        )
