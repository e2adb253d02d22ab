"""The failure and the fix, side by side: pi-ai (OpenClaw's stream parser) runs a multi-turn tool
task against the Kimi server simulator in its hardest realistic shape, once directly and once
through kimiwire. Run it with ./scripts/demo."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

import httpx  # noqa: E402
from _clients import EXPECTED_TOOL_RUNS, TASK, run_piai  # noqa: E402
from kimiwire.launch import Mitmdump  # noqa: E402
from kimiwire.sim.server import SimulatorThread  # noqa: E402

HARDEST = "shape=sglang,interleave,reasoning_between,fragments=5"
EMPTY_TURNS = "shape=sglang,fault=empty:1"  # every turn's first attempt comes back empty (sglang#23341)


def describe(report: dict, requests: list[dict]) -> dict:
    rounds = []
    for turn in report["turns"]:
        calls = [f"{c['name']} {json.dumps(c['arguments'], separators=(',', ':'))}" for c in turn["calls"]]
        if not calls:
            text = turn["text"] or ""
            calls = [f"(text) {text[:60]}{'…' if len(text) > 60 else ''}"] if text else ["(empty turn)"]
        rounds.append(calls)
    received = [(r["name"], r["arguments"]) for r in report["toolRuns"]]
    last = report["turns"][-1] if report["turns"] else {}
    if report["outcome"] == "answered" and received == EXPECTED_TOOL_RUNS:
        ending = "task done: every tool got its exact arguments"
    elif report["outcome"] == "answered" and not last.get("calls") and not last.get("text"):
        ending = "the agent stopped: the turn came back empty"
    elif report["outcome"] == "answered":
        ending = "turn ended, but the task failed (wrong tool arguments or leaked markup)"
    else:
        ending = report["outcome"]
    return {
        "rounds": rounds,
        "ids": [r["tool_call_ids"] for r in requests],
        "ending": ending,
        "poisoned": [r["poisoned_by"] for r in requests if r["poisoned_by"]],
    }


def side_by_side(left: list[str], right: list[str], width: int) -> list[str]:
    rows = []
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        a_lines = textwrap.wrap(a, width) or [""]
        b_lines = textwrap.wrap(b, width) or [""]
        for k in range(max(len(a_lines), len(b_lines))):
            rows.append(
                f"{(a_lines[k] if k < len(a_lines) else ''):<{width}} | {b_lines[k] if k < len(b_lines) else ''}"
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--piai", default="0.67.68", choices=["0.67.68", "0.73.0"])
    parser.add_argument("--shape", default=HARDEST, help=f"simulator settings (default: {HARDEST})")
    parser.add_argument(
        "--empty-turns",
        action="store_true",
        help=f"the empty-turn case instead: {EMPTY_TURNS} (kimiwire retries it)",
    )
    parser.add_argument(
        "--sanitize",
        default="strict",
        choices=["strict", "none"],
        help="strict: OpenClaw 2026.4.21's tool-call id rewrite, as in the original bug reports",
    )
    args = parser.parse_args()
    if args.empty_turns:
        args.shape = EMPTY_TURNS
    print(f"task: {TASK}")
    print(f"client: pi-ai {args.piai} (ids rewritten like OpenClaw: {args.sanitize}); simulator: {args.shape}")
    print("installing pi-ai if needed (npm ci into .cache/) ...", flush=True)
    results = {}
    with (
        SimulatorThread() as sim,
        tempfile.TemporaryDirectory() as tmp,
        Mitmdump(sim.url, pathlib.Path(tmp), {"kimi_capture_dir": pathlib.Path(tmp) / "captures"}) as proxy,
    ):
        for label, url in (("direct", sim.url), ("kimiwire", proxy.url)):
            httpx.delete(f"{sim.url}/_sim/requests")
            # run=: the simulator counts a turn's attempts per run, so both runs meet the same faults
            report = run_piai(args.piai, url, f"{args.shape},run={label}", sanitize=args.sanitize)
            results[label] = describe(report, httpx.get(f"{sim.url}/_sim/requests").json())
    width = 58
    print()
    print(f"{'DIRECT (pi-ai -> simulator)':<{width}} | THROUGH KIMIWIRE (pi-ai -> kimiwire -> simulator)")
    print("-" * width + "-+-" + "-" * width)
    left, right = results["direct"], results["kimiwire"]
    for n in range(max(len(left["rounds"]), len(right["rounds"]))):
        a = left["rounds"][n] if n < len(left["rounds"]) else []
        b = right["rounds"][n] if n < len(right["rounds"]) else []
        print(f"round {n + 1}: what the tools received".ljust(width) + " |")
        for row in side_by_side(["  " + x for x in a], ["  " + x for x in b], width):
            print(row)
    print("-" * width + "-+-" + "-" * width)
    print("ids the server saw in its last request:")
    for row in side_by_side(
        ["  " + json.dumps(left["ids"][-1] if left["ids"] else [])],
        ["  " + json.dumps(right["ids"][-1] if right["ids"] else [])],
        width,
    ):
        print(row)
    if left["poisoned"] or right["poisoned"]:
        print("model copied a broken id and leaked markup:")
        for row in side_by_side(
            [f"  after {x}" for x in left["poisoned"]] or ["  no"],
            [f"  after {x}" for x in right["poisoned"]] or ["  no"],
            width,
        ):
            print(row)
    print("how the run ended:")
    for row in side_by_side(["  " + left["ending"]], ["  " + right["ending"]], width):
        print(row)
    return 0 if right["ending"].startswith("task done") else 1


if __name__ == "__main__":
    sys.exit(main())
