"""Several kimiwire processes behind a real HAProxy give the same answers as one (the repairs are
stateless), and `scripts/balance.py` (`./scripts/run --workers N`) stops everything it started."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
from kimiwire.mitm.capture import upstream_request_body
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings
from mitmproxy import io

from tests.support.clients import FILES, TASK, TOOLS
from tests.support.mitm import free_port
from tests.support.proxied import proxied

ROOT = pathlib.Path(__file__).resolve().parents[2]
BALANCE = ROOT / "scripts" / "balance.py"
sys.path.insert(0, str(ROOT / "scripts"))
from balance import Endpoint, haproxy_config  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="HAProxy is not installed (apt-get install haproxy; ./scripts/test does it)"
)
SIM = "shape=sglang, interleave, reasoning-between"


class Balancer:
    """`scripts/balance.py` as a subprocess: N workers behind HAProxy on 127.0.0.1."""

    def __init__(self, upstream: str, workers: int, tmp_path: pathlib.Path) -> None:
        self.port = free_port()
        self.capture_dir = tmp_path / "captures"
        self.run_dir = tmp_path / "run"
        self.args = [
            sys.executable,
            str(BALANCE),
            "--upstream",
            upstream,
            "--workers",
            str(workers),
            "--port",
            str(self.port),
            "--capture-name",
            "scale",
            "--run-dir",
            str(self.run_dir),
            "--",
            "--set",
            f"kimi_capture_dir={self.capture_dir}",
            "--set",
            f"confdir={tmp_path / 'mitm-conf'}",
        ]
        self.lines: list[str] = []
        self.ready = threading.Event()

    def __enter__(self) -> Balancer:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True
        )
        threading.Thread(target=self._drain, daemon=True).start()
        assert self.ready.wait(60), "\n".join(self.lines)
        assert self.proc.poll() is None, "\n".join(self.lines)
        return self

    def _drain(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "behind HAProxy" in line:
                self.ready.set()
        self.ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_ports(self) -> list[int]:
        text = "\n".join(self.lines)
        match = re.search(r"workers \(([^)]*)\) behind HAProxy", text)
        assert match, text
        return [int(part.rsplit(":", 1)[1]) for part in match.group(1).split(", ")]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        time.sleep(0.05)
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run_tool(name: str, arguments: dict[str, Any]) -> str:
    if name == "read":
        return FILES.get(arguments.get("path", ""), "no such file")
    return f"ran {arguments.get('command', '')}"


def _assemble(body: bytes) -> tuple[str, list[dict[str, Any]], str | None]:
    """Content, tool calls (by index, arguments concatenated over every delta) and finish_reason."""
    content, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    for line in body.split(b"\n"):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = orjson.loads(line[6:])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
                call["id"] = call["id"] or tc.get("id")
                function = tc.get("function") or {}
                call["name"] = call["name"] or function.get("name")
                call["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return content, [calls[i] for i in sorted(calls)], finish


def run_conversation(base_url: str, rounds: int = 6) -> list[bytes]:
    """The simulator's multi-round task, one new connection per request (so a balancer may pick
    another worker each time); returns every raw response body the client received."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    bodies: list[bytes] = []
    for _ in range(rounds):
        request = {"model": "kimi-k2-thinking", "stream": True, "messages": messages, "tools": TOOLS}
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"{base_url}/v1/chat/completions",
                json=request,
                headers={"x-kimi-sim": SIM, "authorization": "Bearer k"},
            )
        assert response.status_code == 200, response.text
        bodies.append(response.content)
        content, calls, finish = _assemble(response.content)
        if not calls:
            assert finish == "stop"
            break
        messages.append(
            {
                "role": "assistant",
                "content": content or None,
                "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ],
            }
        )
        for call in calls:
            result = _run_tool(call["name"], orjson.loads(call["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return bodies


def _sent_upstream(capture_files: list[pathlib.Path]) -> list[tuple[float, bytes]]:
    """(request time, body the proxy sent upstream) of every captured chat flow."""
    sent = []
    for path in capture_files:
        with open(path, "rb") as f:
            for flow in io.FlowReader(f).stream():
                sent.append((flow.request.timestamp_start, upstream_request_body(flow)))
    return sorted(sent)


def _normalised(body: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', body)


def test_turns_on_different_workers_match_a_single_worker(tmp_path: pathlib.Path) -> None:
    (tmp_path / "one").mkdir()
    with proxied(SimSettings(), tmp_path / "one", save_flows=False) as single:
        one_bodies = run_conversation(single.url)
    one_sent = [body for _, body in _sent_upstream(single.capture_files())]
    assert len(one_bodies) >= 3, "the task takes several rounds"

    (tmp_path / "two").mkdir()
    with SimulatorThread() as sim, Balancer(sim.url, 2, tmp_path / "two") as balancer:
        two_bodies = run_conversation(balancer.url)
        assert balancer.stop() == 0, "\n".join(balancer.lines)
    captures = sorted(balancer.capture_dir.glob("scale-w*.mitm"))
    assert [p.name for p in captures] == ["scale-w1.mitm", "scale-w2.mitm"]
    per_worker = [len(_sent_upstream([p])) for p in captures]
    assert all(n > 0 for n in per_worker), f"round robin put every turn on one worker: {per_worker}"
    two_sent = [body for _, body in _sent_upstream(captures)]

    assert two_sent == one_sent  # byte-identical requests upstream
    assert [_normalised(b) for b in two_bodies] == [_normalised(b) for b in one_bodies]


def test_health_check_is_answered_by_each_worker(tmp_path: pathlib.Path) -> None:
    with SimulatorThread() as sim, Balancer(sim.url, 2, tmp_path) as balancer:
        for port in balancer.worker_ports():
            reply = httpx.get(f"http://127.0.0.1:{port}/_kimiwire/health", timeout=5)
            assert reply.status_code == 200
            assert reply.json()["status"] == "ok"
        assert len(sim.simulator.requests) == 0, "health checks must not reach the upstream"


def test_sigterm_stops_the_balancer_and_every_worker(tmp_path: pathlib.Path) -> None:
    with SimulatorThread() as sim, Balancer(sim.url, 2, tmp_path) as balancer:
        ports = [*balancer.worker_ports(), balancer.port]
        assert run_conversation(balancer.url, rounds=1)
        assert balancer.stop(signal.SIGTERM) == 0
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"
    assert list((tmp_path / "run").glob("*.cfg")) == [], "the generated HAProxy configuration is left behind"


def test_committed_deploy_config_is_the_generated_one() -> None:
    workers = [Endpoint("kimiwire-1", 8080), Endpoint("kimiwire-2", 8080)]
    expected = haproxy_config(Endpoint("0.0.0.0", 8080), workers, stats=Endpoint("0.0.0.0", 8404))
    assert (ROOT / "deploy" / "haproxy.cfg").read_text() == expected
