"""What one flow costs kimiwire's hooks in process: thread CPU µs per hook, medians over many flows.

Each flow is the benchmark's paced stream (scripts/bench_client.py: `answer_events=N,stamp` from
the simulator, its own events and headers, SGLang's layout: a role chunk, reasoning, N text
events each ending in a send-time stamp, the finish chunk, [DONE]), driven through the addon's
hooks as mitmproxy drives them, on a running event loop, captures on: `requestheaders` and
`request`, `responseheaders`, the stream callable once per event (the first event and the rest
reported apart), its end (`stream(b"")`), and `response` (the capture record written).

`--burst N` starts N flows together, as the benchmark's paced rows do: every request, then every
response head, then event by event across the flows, then every end; the hooks then run with
the other flows' work between them (caches as cold as in a proxy serving N streams).
The garbage collector's time is reported apart (`gc`: all of it while the measured flows ran,
per flow; the heap is frozen once set up, as `kimi_gc_freeze` does): a collection lands in
whichever hook allocates at that moment, so the hooks' medians mostly leave it out.
`--against DIR` measures another checkout's addons/ (e.g. `git archive COMMIT addons | tar -x -C
DIR`) in the same process, its package renamed, the two addons' bursts alternated: run one after
the other, two copies of the same code differ widely on a shared machine; alternated in one
process they agree (an A/A run is the check). `--profile` prints cProfile's top functions.

    .venv/bin/python scripts/profile_flow.py [--flows 2000] [--burst 64] [--events 40] [--against DIR] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib
import json
import pathlib
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

HOOKS = ("request", "responseheaders", "first_read", "other_reads", "end_read", "response")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=2000, help="flows measured (after --warmup)")
    parser.add_argument("--warmup", type=int, default=200, help="flows run first, not measured")
    parser.add_argument("--burst", type=int, default=64, help="flows started together")
    parser.add_argument("--events", type=int, default=40, help="text events per flow")
    parser.add_argument("--no-capture", action="store_true", help="captures off")
    parser.add_argument(
        "--history-kb",
        type=int,
        default=0,
        help="the request: an agent's history of about this size (scripts/bench_core.py's, cut), not the bench's hello",
    )
    parser.add_argument("--against", type=pathlib.Path, help="a checkout whose addons/ is measured beside this one")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured flows; print the top")
    parser.add_argument("--top", type=int, default=40, help="functions --profile prints")
    parser.add_argument("--json", action="store_true", help="the medians as one JSON line")
    return parser.parse_args()


def main() -> None:
    args = _args()
    sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]
    with tempfile.TemporaryDirectory(prefix="kimiwire-profile-") as folder:
        if args.against is None:
            addons = {"this": _addon_class("kimiwire")}
        else:  # both renamed alike: the package imported first measured cheaper than its own copy
            addons = {
                "this": _renamed(ROOT, "kimiwire_this", pathlib.Path(folder)),
                "against": _renamed(args.against, "kimiwire_against", pathlib.Path(folder)),
            }
        results, profile = asyncio.run(run(args, addons, pathlib.Path(folder)))
    figures = {name: result.figures(args.flows) for name, result in results.items()}
    if args.json:
        print(json.dumps({name: {k: round(v, 2) for k, v in values.items()} for name, values in figures.items()}))
    else:
        _print(args, figures)
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


def _print(args: argparse.Namespace, figures: dict[str, dict[str, float]]) -> None:
    request = f"a {args.history_kb} KB agent history" if args.history_kb else "the bench's request"
    print(f"{args.flows} flows each, {args.burst} at once, {args.events} text events each, {request}; µs per flow")
    names = list(figures)
    header = "".join(f"{name:>10}" for name in names) + ("     ratio" if len(names) == 2 else "")
    print(f"  {'':16}{header}")
    notes = {
        "total": "(median of the hooks' sum)",
        "all": "(the thread's CPU over the flows: loop, gc, the script's own work included)",
        "gc": "(every collection while the flows ran)",
        "gc_collections": "(collections per flow)",
    }
    for key in figures[names[0]]:
        values = [figures[name][key] for name in names]
        ratio = f"{values[0] / values[1]:10.2f}" if len(values) == 2 and values[1] else ""
        print(f"  {key:16}" + "".join(f"{value:10.1f}" for value in values) + ratio, notes.get(key, ""))


def _addon_class(package: str) -> Any:
    return importlib.import_module(f"{package}.mitm.addon").KimiWire


def _renamed(checkout: pathlib.Path, package: str, folder: pathlib.Path) -> Any:
    """`checkout`'s addons/kimiwire as the package `package` (its imports rewritten), so that two
    run in this process."""
    target = folder / "packages" / package
    shutil.copytree(checkout / "addons" / "kimiwire", target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text()
        renamed = re.sub(r"\b(from|import) kimiwire\b", rf"\1 {package}", text)
        if renamed != text:
            path.write_text(renamed)
    if str(target.parent) not in sys.path:
        sys.path.insert(0, str(target.parent))
    return _addon_class(package)


def sim_events(events: int) -> list[bytes]:
    """The simulator's paced benchmark stream, as its server writes it (stamps included)."""
    import orjson
    from kimiwire.sim.model import plan_turn
    from kimiwire.sim.server import _stamp
    from kimiwire.sim.settings import SimSettings
    from kimiwire.sim.shapes import DONE, stream_chunks

    settings = SimSettings().with_overrides(f"answer_events={events},stamp")
    plan = plan_turn(REQUEST)
    out = []
    for item in stream_chunks(plan, settings, "kimi-k2-thinking", False, "chatcmpl-sim000001"):
        if item == DONE:
            out.append(b"data: [DONE]\n\n")
        else:
            assert isinstance(item, dict)
            _stamp(item)
            out.append(b"data: " + orjson.dumps(item) + b"\n\n")
    return out


REQUEST = {"model": "kimi-k2-thinking", "stream": True, "messages": [{"role": "user", "content": "hello"}]}


def request_body(history_kb: int) -> bytes:
    """The bench's request, or an agent's history (tools, calls, reasoning) of about `history_kb` KB."""
    import orjson

    if not history_kb:
        return orjson.dumps(REQUEST)
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_core

    history = orjson.loads(bench_core.long_history())
    messages = history["messages"]
    low, high = 1, len(messages)  # the most messages whose body stays within the size
    while low < high:
        middle = (low + high + 1) // 2
        if len(orjson.dumps({**history, "messages": messages[:middle]})) <= history_kb * 1024:
            low = middle
        else:
            high = middle - 1
    body: bytes = orjson.dumps({**history, "messages": messages[:low]})
    return body


def make_flow(port: int, events: int, body: bytes) -> Any:
    from mitmproxy import http
    from mitmproxy.test import tflow

    flow = tflow.tflow()
    flow.request = http.Request(
        "127.0.0.1",
        port,
        b"POST",
        b"http",
        b"127.0.0.1:%d" % port,
        b"/v1/chat/completions",
        b"HTTP/1.1",
        http.Headers(
            [
                (b"host", b"127.0.0.1:%d" % port),
                (b"content-type", b"application/json"),
                (b"x-kimi-sim", b"answer_events=%d,stamp,delay=0.02" % events),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ]
        ),
        body,
        None,
        time.time(),
        time.time(),
    )
    flow.live = True
    return flow


def response_head() -> Any:
    from mitmproxy import http

    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    headers.append((b"transfer-encoding", b"chunked"))
    return http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(headers), None, None, time.time(), None)


class Result:
    """One addon's figures: each hook's CPU per flow, the thread's over its bursts, the collector's."""

    def __init__(self) -> None:
        self.samples: dict[str, list[int]] = {hook: [] for hook in HOOKS}
        self.thread_ns = 0
        self.gc_ns = 0
        self.collections = 0

    def figures(self, flows: int) -> dict[str, float]:
        values = {hook: statistics.median(samples) / 1000 for hook, samples in self.samples.items()}
        values["total"] = statistics.median(sum(parts) for parts in zip(*self.samples.values(), strict=True)) / 1000
        values["all"] = self.thread_ns / flows / 1000
        values["gc"] = self.gc_ns / flows / 1000
        values["gc_collections"] = self.collections / flows
        return values


class Collector:
    """The garbage collector's time and collections, counted to the result being measured."""

    def __init__(self) -> None:
        self.result: Result | None = None
        self._started = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        elif self.result is not None:
            self.result.gc_ns += time.perf_counter_ns() - self._started
            self.result.collections += 1


async def run(
    args: argparse.Namespace, addons: dict[str, Any], folder: pathlib.Path
) -> tuple[dict[str, Result], cProfile.Profile | None]:
    from mitmproxy.test import taddons

    results = {name: Result() for name in addons}
    profile = cProfile.Profile() if args.profile else None
    collector = Collector()
    with contextlib.ExitStack() as stack:
        running = {}
        for name, addon_class in addons.items():  # (each in its own context; the hooks read their settings)
            kw = addon_class()
            tctx = stack.enter_context(taddons.context(kw))
            capture = "" if args.no_capture else str(folder / f"captures-{name}")
            tctx.configure(kw, kimi_capture_dir=capture, kimi_gc_freeze=False)
            tctx.options.update(server=True)
            kw.configure({"server"})
            running[name] = kw
        body = request_body(args.history_kb)
        gc.collect()
        gc.freeze()
        done = 0
        rounds = 0
        while done < args.warmup + args.flows:
            burst = min(args.burst, args.warmup + args.flows - done)
            measured = done >= args.warmup
            order = list(running.items())
            if rounds % 2:
                order.reverse()  # ABBA: neither goes first more often
            for name, kw in order:
                result = results[name]
                collector.result = result if measured else None
                start = time.thread_time_ns()
                await run_burst(kw, burst, args.events, body, result.samples if measured else None, profile)
                if measured:
                    result.thread_ns += time.thread_time_ns() - start
            collector.result = None
            done += burst
            rounds += 1
        for kw in running.values():
            if kw.capture is not None:
                assert kw.capture.flows_written == done, (kw.capture.flows_written, kw.capture.last_error)
                kw.capture.close()
    return results, profile


async def run_burst(
    kw: Any,
    burst: int,
    events: int,
    body: bytes,
    samples: dict[str, list[int]] | None,
    profile: cProfile.Profile | None,
) -> None:
    clock = time.thread_time_ns
    upstream = sim_events(events)
    flows = [make_flow(8000, events, body) for _ in range(burst)]
    costs = [dict.fromkeys(HOOKS, 0) for _ in flows]
    on = profile is not None and samples is not None
    if on:
        assert profile is not None
        profile.enable()
    for flow, cost in zip(flows, costs, strict=True):
        start = clock()
        kw.requestheaders(flow)
        assert kw.request(flow) is None  # (a small body: repaired on the loop)
        cost["request"] = clock() - start
    await asyncio.sleep(0)
    for flow, cost in zip(flows, costs, strict=True):
        flow.response = response_head()
        start = clock()
        kw.responseheaders(flow)
        cost["responseheaders"] = clock() - start
    await asyncio.sleep(0)
    streams = [flow.response.stream for flow in flows]
    delivered: list[list[bytes]] = [[] for _ in flows]
    for n, event in enumerate(upstream):
        key = "first_read" if n == 0 else "other_reads"
        for stream, cost, out in zip(streams, costs, delivered, strict=True):
            start = clock()
            chunks = stream(event)
            cost[key] += clock() - start
            out += chunks
        await asyncio.sleep(0)
    for flow, stream, cost, out in zip(flows, streams, costs, delivered, strict=True):
        start = clock()
        out += stream(b"")
        cost["end_read"] = clock() - start
        flow.response.timestamp_end = time.time()
        start = clock()
        assert kw.response(flow) is None
        cost["response"] = clock() - start
    if on:
        assert profile is not None
        profile.disable()
    for flow, out in zip(flows, delivered, strict=True):
        assert b"".join(out) == b"".join(upstream), "the stream was changed"
        assert not flow.metadata["kimiwire"]["errors"], flow.metadata["kimiwire"]["errors"]
    if samples is not None:
        for cost in costs:
            for hook in HOOKS:
                samples[hook].append(cost[hook])
    await asyncio.sleep(0)


if __name__ == "__main__":
    main()
