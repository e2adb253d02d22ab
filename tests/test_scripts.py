"""The README's commands and the helper scripts, run as a user runs them."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import httpx
import orjson

from tests.support.clients import TOOLS
from tests.support.mitm import ROOT, free_port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_without_upstream_starts_the_simulator_and_the_proxy(tmp_path):
    port, sim_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(ROOT / "scripts" / "run"),
            "--port",
            str(port),
            "--sim-port",
            str(sim_port),
            "--",
            "--set",
            f"confdir={tmp_path}",
            "--set",
            f"kimi_capture_dir={tmp_path / 'captures'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: list[str] = []
    ready = threading.Event()

    def drain():
        for line in proc.stdout:
            lines.append(line)
            if "listening at" in line and f":{port}" in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert ready.wait(60), "".join(lines)
        banner = "".join(lines)
        assert "built-in Kimi server simulator" in banner
        assert re.search(r"captures: captures/kimiwire-\d{8}-\d{6}-\d+\.mitm", banner)
        assert "curl -sN" in banner and '"kimiwire": { baseUrl: "http://127.0.0.1:' in banner
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=10,
            json={
                "model": "kimi-k2-thinking",
                "stream": True,
                "tools": TOOLS,
                "messages": [{"role": "user", "content": "read /w/a.txt"}],
            },
        )
        assert b'"id":"functions.read:0","type":"function","function":{"name":"read"' in r.content
        assert r.content.endswith(b"data: [DONE]\n\n")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        proc.wait(20)
    time.sleep(0.3)
    assert not port_open(sim_port), "the simulator must stop with the proxy"
    [capture] = list((tmp_path / "captures").glob("kimiwire-*.mitm"))
    assert capture.name in "".join(lines)


def test_run_rejects_a_bad_upstream():
    done = subprocess.run(
        [str(ROOT / "scripts" / "run"), "--upstream", "localhost:1"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "must start with http://" in done.stderr


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
    assert all(r["cpu_per_event_ratio"] > 0 for r in report["e2e"]["ratios"])
    scale = report["e2e"]["scale"]
    assert scale is not None, "haproxy is installed by ./scripts/test"
    assert scale["workers"]["1"]["errors"] == 0 and scale["workers"]["2"]["errors"] == 0
    assert scale["workers"]["2"]["events"] > 0 and scale["speedup"] > 0
    assert report["e2e"]["paced_capacity"]["tried"], "the paced capacity search ran"
