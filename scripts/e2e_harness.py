"""A real agent harness (OpenClaw, pi, opencode, hermes-agent, mini-swe-agent, kimi-cli: pinned,
installed into .cache/harness/) runs a tool task against the Kimi server simulator, directly and
through kimiwire, on the matrix's upstream shapes, and prints one row per shape and path.

The task: read two files in parallel, then a third; each file holds a random token. A run passes
when the harness exits 0, every token came back to the model in a tool result (the tool really ran
with the right path), no request carried history that made the model write broken calls, and the
harness's final answer holds every token. Exit 0 when every run through kimiwire passed."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

import httpx  # noqa: E402
from kimiwire.launch import Mitmdump  # noqa: E402
from kimiwire.sim.server import SimulatorThread  # noqa: E402
from kimiwire.sim.settings import SimSettings  # noqa: E402

from scripts.harnesses import HARNESSES  # noqa: E402
from scripts.harnesses.base import Harness, Run, Workspace, run_process  # noqa: E402
from scripts.harnesses.shapes import BY_NAME, SHAPES, Shape  # noqa: E402

PATHS = ("direct", "kimiwire")
def proxy_options(shape: Shape, time_scale: float, scratch: pathlib.Path) -> dict[str, object]:
    """kimiwire at its defaults, every time limit (timeouts, keep-alive, retry budget and backoff)
    multiplied by one factor, `kimi_timeout_scale`, so their ratios stay the defaults' and a stall
    costs seconds, not minutes."""
    options: dict[str, object] = {"kimi_timeout_scale": f"{time_scale:g}"}
    options["kimi_capture_dir"] = scratch / "captures"
    options.update(shape.proxy)
    return options


@dataclass
class Outcome:
    harness: str
    version: str
    shape: str
    path: str
    passed: bool
    detail: str
    seconds: float
    requests: int


class _SimulatorUpstream:
    def __init__(self, shape: Shape) -> None:
        self._thread = SimulatorThread(SimSettings().with_overrides(shape.sim))
        self.url = ""

    def __enter__(self) -> _SimulatorUpstream:
        self._thread.__enter__()
        self.url = self._thread.url
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.__exit__(*exc)

    def recorded(self) -> list[dict[str, Any]]:
        return [r["body"] for r in httpx.get(f"{self.url}/_sim/requests", timeout=10).json()]

    def poisoned(self) -> list[str]:
        return [r["poisoned_by"] for r in httpx.get(f"{self.url}/_sim/requests", timeout=10).json() if r["poisoned_by"]]


@contextlib.contextmanager
def upstream_for(shape: Shape) -> Iterator[Any]:
    if shape.upstream is not None:
        with shape.upstream() as upstream:
            yield upstream
    else:
        with _SimulatorUpstream(shape) as upstream:
            yield upstream


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content)


def tool_results(requests: list[dict[str, Any]]) -> str:
    """Every tool result the model was sent, in any request."""
    return "\n".join(
        _text(m.get("content"))
        for body in requests
        for m in body.get("messages") or []
        if isinstance(m, dict) and m.get("role") == "tool"
    )


def judge(run: Run, ws: Workspace, poisoned: list[str]) -> tuple[bool, str]:
    results = tool_results(run.requests)
    returned = [t for t in ws.files.values() if t in results]
    answered = [t for t in ws.files.values() if t in run.answer]
    passed = run.returncode == 0 and len(returned) == len(answered) == len(ws.files) and not poisoned
    if passed:
        return True, "3 reads ran, results went back, the answer holds all 3 tokens"
    parts = [f"exit {run.returncode}", f"reads returned {len(returned)}/3", f"answer holds {len(answered)}/3"]
    if poisoned:
        parts.append(f"model copied broken ids ({poisoned[0]})")
    if "<|tool_call" in run.answer:
        parts.append("the calls reached the user as markup text")
    elif re.search(r'\w+:?\d+\s*\{"\w+":', run.answer):  # `read:0 {"path": ..}`: the markers stripped
        parts.append("the calls reached the user as text")
    elif run.returncode == 0 and not run.answer.strip():
        parts.append("empty answer")
    failure = failure_line(run)
    if failure:
        parts.append(f"`{failure}`")
    return False, "; ".join(parts)


def failure_line(run: Run) -> str:
    """The first line of the harness's output that looks like its error, shortened."""
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", run.stderr + "\n" + run.stdout)
    raw = re.findall(r"rawError=(.+)", text)  # OpenClaw's own provider error
    if raw:
        return raw[-1].strip()[:160].replace("|", "/").replace("`", "'")
    lines = [
        line.strip()
        for line in text.splitlines()
        if re.search(r"\berror\b|failed|timed out|terminated|invalid|exception", line, re.I)
        and "[session-sqlite]" not in line  # OpenClaw's housekeeping log, not the run's failure
        and not re.match(r'\s*"\w+":', line)  # a key of the harness's JSON result (OpenClaw's "replayInvalid")
    ]
    return lines[0][:160].replace("|", "/").replace("`", "'") if lines else ""


def run_once(
    harness: Harness, version: str, install_dir: pathlib.Path, shape: Shape, path: str, timeout: float, scale: float
) -> Outcome:
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"{harness.name}-{shape.name}-{path}-", dir=install_dir.parent))
    ws = Workspace.create(scratch)
    task = harness.task(ws)
    with upstream_for(shape) as upstream:
        options = proxy_options(shape, scale, scratch)
        with Mitmdump(upstream.url, scratch / "mitm-conf", options) as proxy:
            base_url = f"{upstream.url if path == 'direct' else proxy.url}/v1"
            harness.prepare(version, install_dir, ws, base_url)
            started = time.monotonic()
            returncode, stdout, stderr = run_process(
                harness.command(version, install_dir, ws, task), ws.root, harness.env(version, install_dir, ws), timeout
            )
            run = Run(returncode, stdout, stderr, time.monotonic() - started, upstream.recorded())
            poisoned = upstream.poisoned() if hasattr(upstream, "poisoned") else []
    run.answer = harness.answer(run, ws)
    (scratch / "stdout.txt").write_text(stdout)
    (scratch / "stderr.txt").write_text(stderr)
    (scratch / "requests.json").write_text(json.dumps(run.requests, indent=1))
    passed, detail = judge(run, ws, poisoned)
    if passed:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        detail += f" (logs: {scratch.relative_to(ROOT) if scratch.is_relative_to(ROOT) else scratch})"
    return Outcome(harness.name, version, shape.name, path, passed, detail, run.seconds, len(run.requests))


def resolve(harness: Harness, version: str) -> str:
    if version == "default":
        return harness.versions[0]
    if version == "newest":
        return harness.versions[-1]
    return version


def print_table(outcomes: list[Outcome], paths: tuple[str, ...]) -> None:
    heads = {"direct": "directly", "kimiwire": "through kimiwire"}
    print("\n| harness | shape | " + " | ".join(heads[p] for p in paths) + " |")
    print("|---|---" + "|---" * len(paths) + "|")
    keys = list(dict.fromkeys((o.harness, o.version, o.shape) for o in outcomes))
    for name, version, shape in keys:
        cells = []
        for path in paths:
            key = (name, version, shape, path)
            o = next((o for o in outcomes if (o.harness, o.version, o.shape, o.path) == key), None)
            cells.append("" if o is None else f"{'PASS' if o.passed else 'FAIL'}: {o.detail} ({o.seconds:.0f} s)")
        print(f"| {name} {version} | {shape} | " + " | ".join(cells) + " |")


def report(lines: list[dict[str, Any]]) -> str:
    """The harness-matrix table of docs/harnesses.md from the JSON lines of a run: a row per harness version, a
    column per shape, each cell `direct / through kimiwire`; then what failed and how."""
    mark = {True: "✓", False: "✗"}
    shapes = list(dict.fromkeys(line["shape"] for line in lines))
    rows = list(dict.fromkeys((line["harness"], line["version"]) for line in lines))
    cell = {(o["harness"], o["version"], o["shape"], o["path"]): o for o in lines}
    out = ["| harness | " + " | ".join(shapes) + " |", "|---" * (len(shapes) + 1) + "|"]
    for name, version in rows:
        title = f"{HARNESSES[name].title} {version}" if name in HARNESSES else f"{name} {version}"
        cells = []
        for shape in shapes:
            pair = [cell.get((name, version, shape, path)) for path in PATHS]
            cells.append(" / ".join("-" if o is None else mark[o["passed"]] for o in pair))
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    failures = [o for o in lines if not o["passed"]]
    if failures:
        out.append("")
        for o in failures:
            where = "directly" if o["path"] == "direct" else "through kimiwire"
            detail = o["detail"].split(" (logs: ")[0]
            out.append(f"- {o['harness']} {o['version']}, {o['shape']}, {where}: {detail}")
    seconds = sum(o["seconds"] for o in lines)
    out.append(f"\n{len(lines)} runs, {seconds / 60:.0f} minutes of harness time.")
    return "\n".join(out)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: the simulator and mitmdump stop


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(prog="scripts/e2e-harness", description=__doc__)
    parser.add_argument("--harness", default="all", help=f"{' | '.join(HARNESSES)} | all (comma lists work)")
    parser.add_argument(
        "--version", default="default", help="a release, `default` (the first pinned), `newest` or `pinned` (all)"
    )
    parser.add_argument("--shape", default="all", help=f"{' | '.join(BY_NAME)} | all (comma lists work)")
    parser.add_argument("--path", choices=(*PATHS, "both"), default="both")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for one harness run")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.1,
        help="kimi_timeout_scale: every kimiwire time limit is its default times this (default 0.1: a stall is "
        "retried after 9 s, not 90 s)",
    )
    parser.add_argument("--json", type=pathlib.Path, help="append every outcome to this JSON-lines file")
    parser.add_argument("--show-config", action="store_true", help="print each harness's config and exit")
    parser.add_argument("--report", type=pathlib.Path, help="print the docs/harnesses.md table of a run and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report([json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]))
        return 0
    names = list(HARNESSES) if args.harness == "all" else args.harness.split(",")
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {unknown[0]!r}: {', '.join(HARNESSES)}")
    shapes = SHAPES if args.shape == "all" else tuple(BY_NAME[s] for s in args.shape.split(","))
    paths = PATHS if args.path == "both" else (args.path,)
    outcomes: list[Outcome] = []
    for name in names:
        harness = HARNESSES[name]
        versions = harness.versions if args.version == "pinned" else (resolve(harness, args.version),)
        for version in versions:
            if args.show_config:
                file, text = harness.config(version, "http://127.0.0.1:8080/v1")
                print(f"{harness.title} {version}: ~/{file}\n{text}")
                continue
            install_dir = harness.install(version)
            print(harness.describe(version, install_dir), flush=True)
            for shape in shapes:
                for path in paths:
                    print(f"  {name} {version}, shape {shape.name}, {path} ...", flush=True)
                    outcome = run_once(harness, version, install_dir, shape, path, args.timeout, args.time_scale)
                    print(f"    {'PASS' if outcome.passed else 'FAIL'} ({outcome.seconds:.0f} s): {outcome.detail}")
                    outcomes.append(outcome)
                    if args.json:
                        with args.json.open("a") as out:
                            out.write(json.dumps(asdict(outcome)) + "\n")
    if outcomes:
        print_table(outcomes, paths)
    return 0 if all(o.passed for o in outcomes if o.path == "kimiwire") else 1


if __name__ == "__main__":
    sys.exit(main())
