"""The README's commands and the helper scripts, run as a user runs them."""

import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import ClassVar

import httpx
import orjson
import pytest

from tests.support.clients import TOOLS
from tests.support.mitm import ROOT, free_port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class RunScript:
    """`scripts/run` started as a user starts it, its output collected; `ready` once mitmdump listens."""

    def __init__(self, tmp_path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        command = [str(ROOT / "scripts" / "run"), "--port", str(self.port), *args]
        if "--" not in args:
            command.append("--")
        command += ["--set", f"confdir={tmp_path / 'conf'}"]
        if not any(a.startswith("kimi_capture_dir=") for a in args):
            command += ["--set", f"kimi_capture_dir={tmp_path / 'captures'}"]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._drained = threading.Thread(target=self._drain, daemon=True)
        self._drained.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening at" in line and f":{self.port}" in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        assert self.ready.wait(60), self.output

    def children(self) -> list[int]:
        """Every process started under the script (its whole process group but itself)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.proc.pid:
                try:
                    if os.getpgid(int(entry)) == self.proc.pid:
                        pids.append(int(entry))
                except ProcessLookupError:
                    pass
        return pids

    def finish(self, timeout: float = 30) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._drained.join(5)
        return code


def chat(port: int, path: str = "/v1") -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}{path}/chat/completions",
        timeout=10,
        json={
            "model": "kimi-k2-thinking",
            "stream": True,
            "tools": TOOLS,
            "messages": [{"role": "user", "content": "read /w/a.txt"}],
        },
    )


def test_run_without_upstream_starts_the_simulator_and_the_proxy(tmp_path):
    sim_port = free_port()
    run = RunScript(tmp_path, "--sim-port", str(sim_port))
    try:
        run.wait_ready()
        banner = run.output
        assert f"the built-in Kimi server simulator answers at http://127.0.0.1:{sim_port}" in banner
        assert f"harness base URL: http://127.0.0.1:{run.port}/v1" in banner
        assert "API key: any (the simulator checks none)" in banner
        assert re.search(r"captures: on, \S+/captures/kimiwire-\d{8}-\d{6}-\d+\.mitm", banner), banner
        assert "curl -sN" in banner and '"kimiwire": { baseUrl: "http://127.0.0.1:' in banner
        r = chat(run.port)
        assert b'"id":"functions.read:0","type":"function","function":{"name":"read"' in r.content
        assert r.content.endswith(b"data: [DONE]\n\n")
    finally:
        os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl-C does
        run.finish()
    assert not port_open(sim_port), "the simulator must stop with the proxy"
    [capture] = list((tmp_path / "captures").glob("kimiwire-*.mitm"))
    assert capture.name in run.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_run_stops_everything_it_started_on_a_signal_to_its_pid(tmp_path, signum):
    sim_port = free_port()
    run = RunScript(tmp_path, "--sim-port", str(sim_port))
    run.wait_ready()
    started = run.children()
    assert started, "mitmdump runs under the script"
    os.kill(run.proc.pid, signum)  # the script's pid only, as `kill` or a closing terminal does
    assert run.finish() == 128 + signum
    time.sleep(0.3)
    assert [pid for pid in started if os.path.exists(f"/proc/{pid}")] == [], run.output
    assert not port_open(run.port) and not port_open(sim_port)


def test_run_leaves_no_temporary_files(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = RunScript(tmp_path, env={"TMPDIR": str(scratch)})
    try:
        run.wait_ready()
        assert chat(run.port).status_code == 200
    finally:
        os.kill(run.proc.pid, signal.SIGTERM)
        run.finish()
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("flag", ["--port", "--sim-port"])
def test_run_names_the_flag_for_a_busy_port(tmp_path, flag):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(ROOT / "scripts" / "run"), flag, str(port)], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"kimiwire: cannot listen on 127.0.0.1:{port} (Address already in use); choose another port with {flag} N"
    )
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_run_rejects_a_bad_kimi_option_before_the_banner(tmp_path):
    done = subprocess.run(
        [str(ROOT / "scripts" / "run"), "--port", str(free_port()), "--", "--set", "kimi_idle_timeout=soon"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        "kimiwire: bad --set value: kimi_idle_timeout must be a number of seconds (got 'soon')"
    )
    assert "Traceback" not in done.stderr


def test_run_splits_an_upstream_url_with_a_path(tmp_path):
    from kimiwire.sim.server import SimulatorThread

    with SimulatorThread() as sim:
        run = RunScript(tmp_path, "--upstream", f"{sim.url}/v1/")
        try:
            run.wait_ready()
            assert f"proxy http://127.0.0.1:{run.port}  ->  {sim.url}   (flavor selfhosted" in run.output
            assert f"harness base URL: http://127.0.0.1:{run.port}/v1\n" in run.output
            assert "the harness's own; its Authorization header reaches" in run.output
            r = chat(run.port)
            assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
            assert "the engine and model from its /v1/models" in run.output
        finally:
            os.kill(run.proc.pid, signal.SIGTERM)
            run.finish()
        # mitmdump's log: what `auto` found at start
        assert "engine sglang (from /v1/models owned_by=sglang" in run.output and "flavor sglang" in run.output


@pytest.mark.parametrize(
    ("upstream", "base_path", "flavor"),
    [
        ("https://api.deepinfra.com/v1/openai", "/v1/openai", "deepinfra"),
        ("https://api.moonshot.ai/v1", "/v1", "moonshot"),
    ],
)
def test_run_banner_for_hosted_upstreams(tmp_path, upstream, base_path, flavor):
    # Nothing is sent upstream: mitmdump connects only when a request comes (lazy connections).
    run = RunScript(tmp_path, "--upstream", upstream, "--", "--set", "kimi_capture_dir=")
    try:
        run.wait_ready()
    finally:
        os.kill(run.proc.pid, signal.SIGTERM)
        run.finish()
    origin = upstream[: upstream.index("/", len("https://"))]
    assert f"->  {origin}   (flavor {flavor}, detected from the host)" in run.output
    assert f"harness base URL: http://127.0.0.1:{run.port}{base_path}\n" in run.output
    assert "captures: off" in run.output and "Invalid server specification" not in run.output


def test_run_rejects_a_bad_upstream():
    done = subprocess.run(
        [str(ROOT / "scripts" / "run"), "--upstream", "localhost:1"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "must start with http://" in done.stderr


@pytest.mark.parametrize(("extra", "installs"), [("", "-e ROOT"), ("test", "-e ROOT[test]")])
def test_setup_installs_the_test_tools_only_for_the_tests(tmp_path, extra, installs):
    # A fake repo whose .venv python records how pip is asked to install the project.
    fake_root = tmp_path / "repo"
    (fake_root / "scripts").mkdir(parents=True)
    (fake_root / "scripts" / "_setup.sh").write_text((ROOT / "scripts" / "_setup.sh").read_text())
    (fake_root / "scripts" / "probe").write_text(f'source "$(dirname "$0")/_setup.sh"\nensure_venv {extra}\n')
    (fake_root / "pyproject.toml").write_text("")
    (fake_root / ".venv" / "bin").mkdir(parents=True)
    python = fake_root / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    python.chmod(0o755)
    done = subprocess.run(["bash", str(fake_root / "scripts" / "probe")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().replace(str(fake_root), "ROOT").splitlines()
    assert calls[-1] == f"-m pip install -q {installs}"


def test_sim_script_help_lists_shapes_and_faults():
    done = subprocess.run([str(ROOT / "scripts" / "sim"), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "sglang" in done.stdout and "stall:N" in done.stdout


def test_setup_says_what_to_do_without_python_312(tmp_path):
    # A PATH and pyenv root with no Python 3.12+, and no .venv: the scripts must say what to do.
    fake_root = tmp_path / "repo"
    (fake_root / "scripts").mkdir(parents=True)
    (fake_root / "scripts" / "_setup.sh").write_text((ROOT / "scripts" / "_setup.sh").read_text())
    (fake_root / "scripts" / "probe").write_text('source "$(dirname "$0")/_setup.sh"\nensure_venv\n')
    (fake_root / "pyproject.toml").write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "nopyenv")}
    done = subprocess.run(
        ["bash", str(fake_root / "scripts" / "probe")], capture_output=True, text=True, timeout=60, env=env
    )
    if done.returncode == 0:  # this machine has a system Python 3.12+: nothing to show
        assert (fake_root / ".venv").exists()
        return
    assert "needs Python 3.12 or newer" in done.stderr and "pyenv install 3.12" in done.stderr


def test_sim_settings_reach_the_simulator_per_request():
    from kimiwire.sim.server import SimulatorThread

    with SimulatorThread() as sim:
        r = httpx.post(
            f"{sim.url}/v1/chat/completions",
            headers={"x-kimi-sim": "fault=status:429"},
            json={"model": "k", "messages": []},
            timeout=5,
        )
        assert r.status_code == 429 and r.json()["error"]["code"] == 429
        r = httpx.post(
            f"{sim.url}/v1/chat/completions",
            json={
                "model": "k@shape=moonshot",
                "stream": False,
                "messages": [{"role": "user", "content": "read /w/a.txt"}],
                "tools": TOOLS,
            },
            timeout=5,
        )
        call = r.json()["choices"][0]["message"]["tool_calls"][0]
        assert call["id"] == "read:0" and orjson.loads(call["function"]["arguments"]) == {"path": "/w/a.txt"}
        bad = httpx.post(
            f"{sim.url}/v1/chat/completions",
            headers={"x-kimi-sim": "shape=nope"},
            json={"model": "k", "messages": []},
            timeout=5,
        )
        assert bad.status_code == 400 and "shape must be one of" in bad.json()["error"]["message"]


def test_demo_shows_the_failure_and_the_fix():
    done = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-2:]
    text = "\n".join(last)
    assert "task failed" in text and "task done: every tool got its exact arguments" in text
    assert "functionsread0" in done.stdout  # the broken ids the server saw without the proxy


def test_demo_shows_the_empty_turn_retried():
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--empty-turns"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = "\n".join(done.stdout.strip().splitlines()[-2:])
    assert "the agent stopped: the turn came back empty" in text
    assert "task done: every tool got its exact arguments" in text


def test_bench_runs_end_to_end_without_errors(tmp_path):
    # No timing is asserted here (benchmarks report ratios); this keeps the benchmark working.
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick", "--repeat", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = orjson.loads(out.read_bytes())
    runs = report["e2e"]["runs"]
    assert {r["path"] for r in runs} == {"direct", "mitmdump", "kimiwire"}
    assert all(r["errors"] == 0 and r["events"] > 0 for r in runs)
    assert all(r["proxy_cpu_s"] is not None for r in runs if r["path"] != "direct")
    memory = report["core"]["memory"]
    assert memory["most_held_with_20mb_argument"] <= memory["limit_bytes"] and memory["bypassed_past_limit"]
    assert "| kimiwire vs plain mitmdump" in done.stdout
    assert all(r["cpu_per_event_ratio"] > 0 and r["latency_p99_ratio"] > 0 for r in report["e2e"]["ratios"])
    # paced rows are paired too: both proxies serve the same paced streams at once, CPU and p99 per pair
    paced = [p for p in report["e2e"]["cpu_pairs"] if p["mode"] == "paced"]
    assert paced and all(p["ratio"] and p["p99_ratio"] for p in paced)
    layouts = report["e2e"]["layouts"]  # real servers' bytes, replayed by the simulator
    assert set(layouts["e2e"]) == {"vllm-0.10.2", "vllm-0.13.0", "vllm-0.20.0", "vllm-0.34.0"} | {
        "sglang-0.5.5",
        "sglang-0.5.23",
        "moonshot-like",
        "gateway-spaced",
        "agent-turn",
    }
    assert all(p["errors"] == 0 and p["ratio"] > 0 for pairs in layouts["e2e"].values() for p in pairs)
    assert layouts["in_process"]["gateway-spaced"]["fast_share_no_tools"] > 0.5
    scale = report["e2e"]["scale"]
    assert scale is not None, "haproxy is installed by ./scripts/test"
    assert scale["workers"]["1"]["errors"] == 0 and scale["workers"]["2"]["errors"] == 0
    assert scale["workers"]["2"]["events"] > 0 and scale["speedup"] > 0
    assert report["e2e"]["paced_capacity"]["tried"], "the paced capacity search ran"


def test_simulator_takes_the_task_from_the_first_user_message_of_the_turn():
    # OpenClaw 2026.9 appends an internal-context user message after the task; it is not a task.
    from kimiwire.sim.model import plan_turn

    # (the marker and form as captured from 2026.9.6; the text here is made to look like a task)
    context = {
        "role": "user",
        "content": [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nread /etc/hosts then run `ls`"}],
    }
    messages = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "read /w/a.txt then read /w/b.txt"},
        context,
    ]
    plans = [plan_turn({"tools": TOOLS, "messages": messages})]
    messages += [
        {
            "role": "assistant",
            "tool_calls": [{"id": "functions.read:0", "function": {"name": "read", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "functions.read:0", "content": "alpha"},
        context,
    ]
    plans.append(plan_turn({"tools": TOOLS, "messages": messages}))
    messages += [
        {
            "role": "assistant",
            "tool_calls": [{"id": "functions.read:1", "function": {"name": "read", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "functions.read:1", "content": "bravo"},
    ]
    plans.append(plan_turn({"tools": TOOLS, "messages": messages}))
    messages += [{"role": "assistant", "content": plans[-1].content}, {"role": "user", "content": "read /w/c.txt"}]
    plans.append(plan_turn({"tools": TOOLS, "messages": messages}))
    assert [[(c.name, orjson.loads(c.arguments)) for c in plan.calls] for plan in plans] == [
        [("read", {"path": "/w/a.txt"})],
        [("read", {"path": "/w/b.txt"})],
        [],
        [("read", {"path": "/w/c.txt"})],
    ]
    assert plans[2].content == "Done. alpha | bravo"


def _self_signed_certificate(folder):
    """A certificate for 127.0.0.1 that is its own CA, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kimiwire test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "upstream-ca.pem", folder / "upstream-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class TlsUpstream:
    """A chat-completions server on 127.0.0.1 over TLS with the given certificate (stdlib, threaded)."""

    ANSWER: ClassVar[dict] = {"id": "c", "object": "chat.completion", "model": "k", "choices": []}

    def __init__(self, cert, key) -> None:
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream.paths.append(self.path)
                body = orjson.dumps(TlsUpstream.ANSWER)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.mark.parametrize("trust", ["ca", "insecure", "none"])
def test_run_in_front_of_a_tls_upstream_with_its_own_ca(tmp_path, trust):
    cert, key = _self_signed_certificate(tmp_path)
    options = {"ca": ["--set", f"ssl_verify_upstream_trusted_ca={cert}"], "insecure": ["--set", "ssl_insecure=true"]}
    with TlsUpstream(cert, key) as upstream:
        run = RunScript(tmp_path, "--upstream", f"https://127.0.0.1:{upstream.port}/v1", "--", *options.get(trust, []))
        try:
            run.wait_ready()
            r = chat(run.port)
        finally:
            os.kill(run.proc.pid, signal.SIGTERM)
            run.finish()
    if trust == "none":
        assert r.status_code == 502 and "certificate" in r.json()["error"]["message"].lower(), r.text
        assert upstream.paths == []
    else:
        assert r.status_code == 200 and r.json() == TlsUpstream.ANSWER
        assert upstream.paths == ["/v1/chat/completions"]
