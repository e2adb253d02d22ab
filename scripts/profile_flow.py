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
`--code DIR` runs another checkout's addons/ (e.g. `git archive COMMIT addons | tar -x -C DIR`)
to compare before and after in one session; `--profile` prints cProfile's top functions.

    .venv/bin/python scripts/profile_flow.py [--flows 2000] [--burst 64] [--events 40] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pathlib
import pstats
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
    parser.add_argument("--code", type=pathlib.Path, default=ROOT, help="checkout whose addons/ is measured")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured flows; print the top")
    parser.add_argument("--top", type=int, default=40, help="functions --profile prints")
    parser.add_argument("--json", action="store_true", help="the medians as one JSON line")
    return parser.parse_args()


def main() -> None:
    args = _args()
    sys.path[:0] = [str(args.code.resolve() / "addons"), str(ROOT)]
    samples, profile, collector = asyncio.run(run(args))
    medians = {hook: statistics.median(values) / 1000 for hook, values in samples.items()}
    medians["total"] = statistics.median(sum(parts) for parts in zip(*samples.values(), strict=True)) / 1000
    medians["all"] = collector.thread_ns / args.flows / 1000
    medians["gc"] = collector.spent_ns / args.flows / 1000
    medians["gc_collections"] = collector.collections / args.flows
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in medians.items()}))
    else:
        print(f"{args.code}: {args.flows} flows, {args.burst} at once, {args.events} text events each")
        for hook, value in medians.items():
            if hook == "all":
                print(f"  {hook:16} {value:8.1f} µs per flow (the thread's CPU over the flows: the loop's, gc's,")
                print(f"  {'':16} {'':8} and the script's own work making flows and events included)")
            elif hook == "gc":
                print(f"  {hook:16} {value:8.1f} µs per flow (all collections, over the flows)")
            elif hook == "gc_collections":
                print(f"  {'':16} {value:8.3f} collections per flow")
            else:
                print(f"  {hook:16} {value:8.1f} µs per flow (median)")
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


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


def make_flow(port: int, events: int) -> Any:
    import orjson
    from mitmproxy import http
    from mitmproxy.test import tflow

    body = orjson.dumps(REQUEST)
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


class Collector:
    """The garbage collector's time and collections while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.spent_ns = 0
        self.collections = 0
        self.thread_ns = 0  # the thread's CPU over the measured flows
        self._started = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        elif self.on:
            self.spent_ns += time.perf_counter_ns() - self._started
            self.collections += 1


async def run(args: argparse.Namespace) -> tuple[dict[str, list[int]], cProfile.Profile | None, Collector]:
    from kimiwire.mitm.addon import KimiWire
    from mitmproxy.test import taddons

    samples: dict[str, list[int]] = {hook: [] for hook in HOOKS}
    profile = cProfile.Profile() if args.profile else None
    collector = Collector()
    with tempfile.TemporaryDirectory(prefix="kimiwire-profile-") as folder:
        kw = KimiWire()
        with taddons.context(kw) as tctx:
            tctx.configure(kw, kimi_capture_dir="" if args.no_capture else folder, kimi_gc_freeze=False)
            tctx.options.update(server=True)
            kw.configure({"server"})
            gc.collect()
            gc.freeze()
            done = 0
            while done < args.warmup + args.flows:
                burst = min(args.burst, args.warmup + args.flows - done)
                measured = collector.on = done >= args.warmup
                start = time.thread_time_ns()
                await run_burst(kw, burst, args.events, samples if measured else None, profile)
                if measured:
                    collector.thread_ns += time.thread_time_ns() - start
                done += burst
            if kw.capture is not None:
                assert kw.capture.flows_written == done, (kw.capture.flows_written, kw.capture.last_error)
                kw.capture.close()
    collector.on = False
    return samples, profile, collector


async def run_burst(
    kw: Any, burst: int, events: int, samples: dict[str, list[int]] | None, profile: cProfile.Profile | None
) -> None:
    clock = time.thread_time_ns
    upstream = sim_events(events)
    flows = [make_flow(8000, events) for _ in range(burst)]
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
