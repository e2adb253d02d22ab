"""kimiwire's benchmarks: what the addon costs, as ratios against baselines measured in the same run.

1. Core, in process: stream repair vs an SSE decode/orjson/re-encode floor; request repair of a
   1 MB agent history (selfhosted, and with Moonshot's rules) vs orjson loads+dumps, medians of
   this thread's CPU time over alternated runs; memory while a 1 MB tool argument is buffered.
2. End to end on loopback: the simulator directly, through mitmdump without the addon (streaming
   on), and through mitmdump with the addon; time to first byte, per-event latency, events/s at
   1, 16 and 64 concurrent streams; proxy CPU per 10,000 events and per event against plain mitmdump
   (the headline ratio); errors; proxy RSS over 1,000 streams; the most paced streams one proxy carries
   with p99 event latency under 50 ms.
3. Scale-out: events/s at 64 fast streams through HAProxy with one and with two workers (scripts/balance.py).
4. Chaos: 2,000 requests (60 with --quick) at 32 in flight against a seeded random-fault upstream
   (kimiwire.sim.chaos): requests, faults by kind, lost (must be 0), seconds, proxy RSS.
5. Layouts: real servers' bytes (scripts/bench_layouts.py: the engine corpus's vLLM and SGLang layouts,
   a Moonshot-like and a spaced-JSON gateway layout, an agent turn with reasoning, text and two
   fragmented calls), replayed by the simulator: proxy CPU per event against plain mitmdump at 1, 16
   and 64 fast streams, and in process the stream callable's time per event, fast and full path.

Prints a markdown table and writes the same figures as JSON. Run with ./scripts/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

import bench_layouts  # noqa: E402
import orjson  # noqa: E402
from kimiwire import launch  # noqa: E402
from kimiwire.wire.facts import RequestFacts  # noqa: E402
from kimiwire.wire.policy import Flavor, Policy  # noqa: E402
from kimiwire.wire.request.repair import repair_request_body  # noqa: E402
from kimiwire.wire.response.stream_repair import StreamRepairer  # noqa: E402
from kimiwire.wire.sse import SSEDecoder, encode_data  # noqa: E402

POLICY = Policy.build(Flavor.SELFHOSTED)
MOONSHOT_POLICY = Policy.build(Flavor.MOONSHOT)  # its contract rules on top: hygiene, results in place, renames
# Rounds per --repeat of the request rows (medians of CPU time): each round is a few milliseconds.
REQUEST_ROUNDS = 20
TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "exec": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}
FACTS = RequestFacts(12, TOOLS, True, True)
FAST_WINDOW = 20_000  # events per measurement of a fast row
# Pairs per row of the headline, per --repeat: single pairs on this shared VM ranged 0.70-1.44x around a
# median of 1.16x (30 pairs, one stream), so six pairs left the median itself about +-0.05 from run to run.
PAIRS_PER_REPEAT = 5


# -- 1. core ---------------------------------------------------------------------------------------


def realistic_stream(total: int = 10_000) -> list[bytes]:
    """SGLang-shaped: reasoning, content, then six parallel calls whose fragments interleave."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2-thinking"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"reasoning_content": f"thinking token {i} "}) for i in range(4000)]
    events += [event({"content": f"word{i} "}) for i in range(3000)]
    calls = 6
    fragments_per_call = (total - len(events) - 2 - calls) // calls
    for i in range(calls):
        name = "read" if i % 2 == 0 else "exec"
        events.append(
            event(
                {
                    "tool_calls": [
                        {
                            "id": f"functions.{name}:{12 + i}",
                            "index": i,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
    key = {"read": "path", "exec": "command"}
    bodies = []
    for i in range(calls):
        name = "read" if i % 2 == 0 else "exec"
        text = orjson.dumps({key[name]: "x" * (fragments_per_call * 3 - 14)}).decode()
        size = -(-len(text) // fragments_per_call)
        bodies.append([text[k : k + size] for k in range(0, len(text), size)])
    for k in range(max(len(b) for b in bodies)):
        for i, pieces in enumerate(bodies):
            if k < len(pieces):
                events.append(
                    event(
                        {
                            "tool_calls": [
                                {
                                    "id": None,
                                    "index": i,
                                    "type": "function",
                                    "function": {"name": None, "arguments": pieces[k]},
                                }
                            ]
                        }
                    )
                )
    while len(events) < total - 2:  # round up to the exact count with content tokens
        events.insert(4001, event({"content": "pad "}))
    events.append(event({}, "tool_calls"))
    events.append(b"data: [DONE]\n\n")
    return events


def floor_pass(events: list[bytes]) -> int:
    decoder = SSEDecoder()
    out = 0
    for piece in events:
        for ev in decoder.feed(piece):
            if ev.data is None or ev.data == b"[DONE]":
                out += 1
                continue
            out += len(encode_data(orjson.dumps(orjson.loads(ev.data))))
    return out


def repair_pass(events: list[bytes]) -> int:
    repairer = StreamRepairer(FACTS, POLICY)
    out = 0
    for piece in events:
        out += len(repairer.feed(piece))
    return out + len(repairer.end())


def best_time(fn: Any, arg: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_medians(fns: dict[str, Any], arg: Any, rounds: int) -> dict[str, float]:
    """Median CPU seconds of this thread for each `fn(arg)`, the functions run in turn in each round:
    on a shared machine they see the same neighbours, and CPU time leaves out the time others ran."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            gc.collect()
            start = time.thread_time()
            fns[name](arg)
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def long_history() -> bytes:
    """About 1 MB: 500 messages, 200 tool calls, reasoning on every assistant turn, OpenClaw ids."""
    messages: list[dict[str, Any]] = []
    k = 0
    for round_ in range(100):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"step {round_}: " + "u" * 300}]})
        calls = []
        for _ in range(2):
            calls.append(
                {
                    "id": f"functionsread{k}",
                    "type": "function",
                    "function": {"name": "read", "arguments": orjson.dumps({"path": f"/src/f{k}.py"}).decode()},
                }
            )
            k += 1
        messages.append({"role": "assistant", "content": None, "reasoning_content": "r" * 1500, "tool_calls": calls})
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "c" * 3000})
        messages.append({"role": "assistant", "content": "a" * 400, "reasoning_content": "r" * 1500})
    body = {
        "model": "kimi-k2-thinking",
        "stream": True,
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in TOOLS.items()],
    }
    return orjson.dumps(body)


def peak_memory_for_big_argument(size: int = 1_000_000) -> dict[str, Any]:
    argument = orjson.dumps({"path": "p" * (size - 11)}).decode()
    pieces = [argument[i : i + 1000] for i in range(0, len(argument), 1000)]
    events = [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"functions.read:0",'
        b'"type":"function","function":{"name":"read","arguments":""}}]}}]}\n\n'
    ]
    events += [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
        + orjson.dumps(p)
        + b"}}]}}]}\n\n"
        for p in pieces
    ]
    events += [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n', b"data: [DONE]\n\n"]
    gc.collect()
    tracemalloc.start()
    repairer = StreamRepairer(RequestFacts(0, TOOLS, True, True), POLICY)
    held_peak = 0
    for event in events[:-2]:
        repairer.feed(event)
        held_peak = max(held_peak, repairer.buffered)
    _, while_buffering = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for event in events[-2:]:
        repairer.feed(event)
    _, at_flush = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # a 20 MB argument against the 8 MiB limit: what is held never passes the limit (plus one chunk)
    limited = StreamRepairer(RequestFacts(0, TOOLS, True, True), POLICY)
    most = 0
    big_piece = (
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"'
        + b"q" * 100_000
        + b'"}}]}}]}\n\n'
    )
    limited.feed(events[0])
    for _ in range(200):
        limited.feed(big_piece)
        most = max(most, limited.buffered)
    return {
        "argument_bytes": len(argument),
        "held_peak_bytes": held_peak,
        "peak_bytes_while_buffering": while_buffering,
        "peak_bytes_at_flush": at_flush,
        "limit_bytes": POLICY.stream_buffer_limit,
        "most_held_with_20mb_argument": most,
        "bypassed_past_limit": limited.bypass,
    }


def core(repeat: int) -> dict[str, Any]:
    events = realistic_stream()
    assert len(events) == 10_000, len(events)
    floor = best_time(floor_pass, events, repeat)
    repair = best_time(repair_pass, events, repeat)
    body = long_history()
    request = cpu_medians(
        {
            "floor": lambda b: orjson.dumps(orjson.loads(b)),
            "repair": lambda b: repair_request_body(b, POLICY),
            "moonshot": lambda b: repair_request_body(b, MOONSHOT_POLICY),
        },
        body,
        REQUEST_ROUNDS * repeat,
    )
    request_floor, request_repair = request["floor"], request["repair"]
    result = repair_request_body(body, POLICY)
    assert result.body is not None and len(result.log) >= 400
    moonshot = repair_request_body(body, MOONSHOT_POLICY)
    assert moonshot.body is not None and len(moonshot.log) >= 400
    return {
        "stream_events": len(events),
        "stream_floor_s": floor,
        "stream_repair_s": repair,
        "stream_repair_events_per_s": len(events) / repair,
        "stream_ratio": repair / floor,
        "history_bytes": len(body),
        "request_floor_s": request_floor,
        "request_repair_s": request_repair,
        "request_ratio": request_repair / request_floor,
        "request_repair_moonshot_s": request["moonshot"],
        "request_moonshot_ratio": request["moonshot"] / request_floor,
        "memory": peak_memory_for_big_argument(),
    }


# -- 2. end to end ---------------------------------------------------------------------------------

_SENT = re.compile(rb"\[sent_at=(\d+)\]")  # the simulator's stamp (sim/server.py STAMP_FORMAT)


async def one_stream(port: int, settings: str, expect: int) -> dict[str, Any]:
    body = orjson.dumps(
        {"model": "kimi-k2-thinking", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"x-kimi-sim: {settings}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    start = time.monotonic_ns()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    headers = await reader.readuntil(b"\r\n\r\n")
    ttfb = time.monotonic_ns() - start
    latencies: list[int] = []
    carry = b""
    done = False
    status_ok = headers.startswith(b"HTTP/1.1 200")
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            now = time.monotonic_ns()
            if not data:
                break
            window = carry + data
            for match in _SENT.finditer(window, max(0, len(carry) - 40) if carry else 0):
                if match.end() > len(carry) - 1 or not carry:
                    latencies.append(now - int(match.group(1)))
            carry = window[-48:]
            if b"[DONE]" in window and window.endswith(b"0\r\n\r\n"):
                done = True
                break
    finally:
        writer.close()
    return {"ttfb_ns": ttfb, "latencies": latencies, "ok": status_ok and done and len(latencies) >= expect}


async def run_streams(
    port: int, concurrency: int, events: int, delay: float, rounds: int = 1, replay: str = ""
) -> dict[str, Any]:
    """`concurrency` streams at once, `rounds` times in a row (the figures cover all rounds);
    `replay`: the simulator serves that file of its replay directory (`events` stamped events)."""
    settings = f"answer_events={events},stamp" + (f",delay={delay}" if delay else "")
    settings += f",replay={replay}" if replay else ""
    start = time.monotonic()
    results: list[Any] = []
    for _ in range(rounds):
        results += await asyncio.gather(
            *[one_stream(port, settings, events) for _ in range(concurrency)], return_exceptions=True
        )
    wall = time.monotonic() - start
    ok = [r for r in results if isinstance(r, dict) and r["ok"]]
    latencies = sorted(x for r in ok for x in r["latencies"])
    total_events = sum(len(r["latencies"]) for r in ok)
    return {
        "streams": concurrency,
        "events": total_events,
        "errors": len(results) - len(ok),
        "wall_s": wall,
        "events_per_s": total_events / wall if wall else 0.0,
        "ttfb_ms_p50": statistics.median(r["ttfb_ns"] for r in ok) / 1e6 if ok else None,
        "latency_ms_p50": latencies[len(latencies) // 2] / 1e6 if latencies else None,
        "latency_ms_p99": latencies[int(len(latencies) * 0.99)] / 1e6 if latencies else None,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time of the process so far: nanoseconds on the CPU, summed over its threads
    (/proc/PID/task/*/schedstat), where /proc/PID/stat counts only 10 ms ticks (a 2,000-event run
    costs ~0.1 s: ticks alone would make the ratio move by 10%)."""
    total = 0
    try:
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        total = 0
    if total:
        return total / 1e9
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def end_to_end(repeat: int, quick: bool) -> dict[str, Any]:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kimiwire-bench-"))
    sim = launch.simulator(0).start()

    def mitmdump(script: pathlib.Path, **options: object) -> launch.Mitmdump:
        proxy = launch.Mitmdump(f"http://127.0.0.1:{sim.port}", tmp, options, addon=script, verbosity="info")
        return proxy.start()

    plain = mitmdump(ROOT / "scripts" / "bench_baseline_addon.py")
    addon = mitmdump(launch.ADDON, kimi_capture_dir=tmp / "captures")
    paths = {"direct": (sim.port, None), "mitmdump": (plain.port, plain.pid), "kimiwire": (addon.port, addon.pid)}
    plans = {  # (concurrency, events per stream, seconds between events)
        "fast": [(1, 2000, 0.0), (16, 400, 0.0), (64, 120, 0.0)],
        "paced": [(1, 60, 0.02), (16, 60, 0.02), (64, 40, 0.02)],
    }
    if quick:
        plans = {"fast": [(1, 300, 0.0), (16, 50, 0.0), (64, 20, 0.0)], "paced": [(1, 20, 0.02), (64, 10, 0.02)]}
    results: dict[str, Any] = {"runs": []}
    try:
        for mode, plan in plans.items():
            for concurrency, events, delay in plan:
                rows: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
                # A fast row's measurement covers at least FAST_WINDOW events (several rounds of the
                # same streams): a run of a fraction of a second is at the mercy of one garbage
                # collection or a neighbour on the host (+-30% between runs).
                rounds = 1 if delay or quick else max(1, math.ceil(FAST_WINDOW / (concurrency * events)))
                for _ in range(repeat):
                    for name, (port, pid) in paths.items():  # interleaved, so drift hits all paths alike
                        before = cpu_seconds(pid) if pid else 0.0
                        row = asyncio.run(run_streams(port, concurrency, events, delay, rounds))
                        row["proxy_cpu_s"] = cpu_seconds(pid) - before if pid else None
                        rows[name].append(row)
                for name, runs in rows.items():
                    merged = _median_row(runs)
                    merged.update(
                        mode=mode, path=name, concurrency=concurrency, events_per_stream=events, rounds=rounds
                    )
                    results["runs"].append(merged)
        results["cpu_pairs"] = [
            cpu_pairs(
                plain,
                addon,
                concurrency,
                events,
                1 if quick else math.ceil(FAST_WINDOW / (concurrency * events)),
                max(3, PAIRS_PER_REPEAT * repeat) if not quick else 1,
            )
            for concurrency, events, _ in plans["fast"]
        ]
        results["ttfb"] = {name: ttfb_samples(port, 10 if quick else 40) for name, (port, _) in paths.items()}
        results["rss"] = rss_growth(addon.port, addon.pid, 200 if quick else 1000)
        results["paced_capacity"] = paced_capacity(addon.port, quick)
    finally:
        for proc in (addon, plain, sim):
            proc.stop()
    return results


def cpu_pairs(
    plain: launch.Mitmdump,
    addon: launch.Mitmdump,
    concurrency: int,
    events: int,
    rounds: int,
    pairs: int,
    replay: str = "",
) -> dict[str, Any]:
    """The headline: proxy CPU per event, kimiwire over plain mitmdump, with both proxies serving
    the same fast streams at the same time, `pairs` times. Run one after the other, the two sides
    of a pair saw different moments of this shared VM (plain mitmdump against itself varied
    0.84-1.21x that way); served together they see the same ones (0.75-1.23x per pair, the median
    of six 1.005-1.021x)."""
    procs = {"mitmdump": plain, "kimiwire": addon}

    async def together() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(run_streams(proc.port, concurrency, events, 0.0, rounds, replay) for proc in procs.values())
        )

    ratios = []
    errors = 0
    for _ in range(pairs):
        before = {name: cpu_seconds(proc.pid) for name, proc in procs.items()}
        rows = dict(zip(procs, asyncio.run(together()), strict=True))
        per_event = {
            name: (cpu_seconds(proc.pid) - before[name]) / rows[name]["events"] if rows[name]["events"] else None
            for name, proc in procs.items()
        }
        errors += sum(row["errors"] for row in rows.values())
        if per_event["kimiwire"] and per_event["mitmdump"]:
            ratios.append(per_event["kimiwire"] / per_event["mitmdump"])
    return {
        "concurrency": concurrency,
        "events_per_stream": events,
        "rounds": rounds,
        "pairs": ratios,
        "ratio": statistics.median(ratios) if ratios else None,
        "errors": errors,
    }


def paced_capacity(port: int, quick: bool, p99_limit_ms: float = 50.0) -> dict[str, Any]:
    """The most concurrent paced streams (an event every 20 ms) one proxy carries with p99 event
    latency under the limit and no errors; concurrency grows until the limit is crossed."""
    tried = []
    most = 0
    for concurrency in (8, 32, 64, 128) if quick else (8, 16, 32, 64, 128, 256, 384, 512):
        row = asyncio.run(run_streams(port, concurrency, 10 if quick else 40, 0.02))
        tried.append({"concurrency": concurrency, **{k: row[k] for k in ("latency_ms_p99", "errors", "events_per_s")}})
        if row["errors"] or row["latency_ms_p99"] is None or row["latency_ms_p99"] >= p99_limit_ms:
            break
        most = concurrency
    return {"p99_limit_ms": p99_limit_ms, "most_streams": most, "tried": tried}


def scale_out(repeat: int, quick: bool) -> dict[str, Any] | None:
    """events/s at 64 fast streams through HAProxy with one and with two kimiwire workers."""
    import shutil

    if shutil.which("haproxy") is None:
        print("bench: haproxy is not installed; scale-out figures skipped (apt-get install haproxy)", file=sys.stderr)
        return None
    concurrency, events = (64, 30) if quick else (64, 200)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kimiwire-bench-scale-"))
    sim = launch.simulator(0).start()
    out: dict[str, Any] = {"concurrency": concurrency, "events_per_stream": events, "workers": {}}
    try:
        for workers in (1, 2):
            balancer = launch.ListeningProcess(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "balance.py"),
                    "--upstream",
                    f"http://127.0.0.1:{sim.port}",
                    "--workers",
                    str(workers),
                    "--port",
                    "0",
                    "--run-dir",
                    str(tmp),
                    "--",
                    "--set",
                    f"confdir={tmp}",
                    "--set",
                    f"kimi_capture_dir={tmp / 'captures'}",
                ],
                ready=re.compile(r"behind HAProxy at http://127\.0\.0\.1:(\d+)"),
            ).start()
            try:
                asyncio.run(run_streams(balancer.port, 8, 20, 0.0))  # warm-up
                parts = {
                    "workers": _descendants(balancer.pid, "mitmdump"),
                    "haproxy": _descendants(balancer.pid, "haproxy"),
                }
                parts |= {"simulator": [sim.pid], "client": [os.getpid()]}
                before = {name: _cpu_of(pids) for name, pids in parts.items()}
                started = time.monotonic()
                runs = [asyncio.run(run_streams(balancer.port, concurrency, events, 0.0)) for _ in range(repeat)]
                wall = time.monotonic() - started
                row = out["workers"][str(workers)] = _median_row(runs)
                total = sum(r["events"] for r in runs) or 1
                used = {name: _cpu_of(pids) - before[name] for name, pids in parts.items()}
                row["cpu"] = {  # where the two cores went: cores busy, and µs per event
                    name: {"cores": cpu / wall, "us_per_event": cpu / total * 1e6} for name, cpu in used.items()
                }
            finally:
                balancer.stop()
    finally:
        sim.stop()
    out["speedup"] = out["workers"]["2"]["events_per_s"] / out["workers"]["1"]["events_per_s"]
    return out


def layout_rows(repeat: int, quick: bool) -> dict[str, Any]:
    """Section 4: each layout's streams (bench_layouts.py) replayed by the simulator through plain
    mitmdump and kimiwire together, proxy CPU per event paired as in the headline."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kimiwire-bench-layouts-"))
    plan = [(1, 300), (16, 50), (64, 20)] if quick else [(1, 2000), (16, 400), (64, 120)]
    replays = tmp / "replays"
    replays.mkdir()
    names = bench_layouts.write_replays(replays, [events for _, events in plan])
    sim = launch.simulator(0, "--replay-dir", str(replays)).start()
    procs = []
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for script, options in ((ROOT / "scripts" / "bench_baseline_addon.py", {}), (launch.ADDON, {})):
            proxy = launch.Mitmdump(f"http://127.0.0.1:{sim.port}", tmp, options, addon=script, verbosity="info")
            procs.append(proxy.start())
        plain, addon = procs
        for proxy in procs:  # the first streams through a proxy pay for its start (imports, first flows)
            asyncio.run(run_streams(proxy.port, 4, plan[0][1], 0.0, 2, names[(bench_layouts.AGENT_TURN, plan[0][1])]))
        for row in (*bench_layouts.LAYOUTS, bench_layouts.AGENT_TURN):
            rows[row] = [
                cpu_pairs(
                    plain,
                    addon,
                    concurrency,
                    events,
                    1 if quick else math.ceil(FAST_WINDOW / (concurrency * events)),
                    1 if quick else max(3, 2 * repeat),
                    names[(row, events)],
                )
                for concurrency, events in plan
            ]
    finally:
        for proc in (*procs, sim):
            proc.stop()
    return {"e2e": rows, "in_process": bench_layouts.in_process(3 if quick else 5, 5_000 if quick else 20_000)}


def layout_table(layouts: dict[str, Any]) -> str:
    lines = [
        "| layout (real servers' bytes) | proxy CPU/event vs mitmdump, 1 / 16 / 64 fast streams | errors | "
        "in process µs/event fast / full path (tools declared) | taken by the fast path |",
        "|---|---|---|---|---|",
    ]
    for row, pairs in layouts["e2e"].items():
        cpu = " / ".join(f"{p['ratio']:.2f}x" if p["ratio"] else "-" for p in pairs)
        own = layouts["in_process"][row]
        lines.append(
            f"| {row} | {cpu} | {sum(p['errors'] for p in pairs)} | {own['fast_us_tools']:.2f} / "
            f"{own['full_us_tools']:.2f} | {own['fast_share_tools']:.0%} |"
        )
    return "\n".join(lines)


def _cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _descendants(root: int, name: str) -> list[int]:
    """Processes under `root` whose command line names `name` (the balancer's HAProxy and workers)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            with contextlib.suppress(OSError):
                if name.encode() in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
    return found


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        merged[key] = statistics.median(values) if values and key != "errors" else (sum(values) if values else None)
    merged["cpu_per_event_runs"] = [_cpu_per_event(r) for r in runs]  # in run order, to pair with the baseline's
    return merged


def ttfb_samples(port: int, n: int) -> dict[str, float]:
    """Time to first byte over n sequential short streams (one sample per stream is too noisy)."""

    async def sequential() -> list[int]:
        return [(await one_stream(port, "answer_events=3,stamp", 3))["ttfb_ns"] for _ in range(n)]

    samples = sorted(asyncio.run(sequential()))
    return {"samples": n, "p50_ms": samples[n // 2] / 1e6, "p90_ms": samples[int(n * 0.9)] / 1e6}


def rss_growth(port: int, pid: int, streams: int) -> dict[str, Any]:
    async def sequential(n: int) -> int:
        errors = 0
        for _ in range(n):
            result = await one_stream(port, "answer_events=20,stamp", 20)
            errors += not result["ok"]
        return errors

    asyncio.run(sequential(100))  # warm-up: caches, pools, first allocations
    before = rss_bytes(pid)
    errors = asyncio.run(sequential(streams))
    after = rss_bytes(pid)
    return {"streams": streams, "rss_before": before, "rss_after": after, "ratio": after / before, "errors": errors}


# -- report ----------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def table(core_results: dict[str, Any], e2e: dict[str, Any] | None) -> str:
    c = core_results
    m = c["memory"]
    lines = [
        "| core (in process) | kimiwire | floor | ratio | target |",
        "|---|---|---|---|---|",
        f"| stream repair, 10,000 realistic events | {c['stream_repair_s'] * 1e3:.1f} ms "
        f"({c['stream_repair_events_per_s']:,.0f} ev/s) | {c['stream_floor_s'] * 1e3:.1f} ms (SSE+orjson) | "
        f"{c['stream_ratio']:.2f}x | >= 100,000 ev/s, <= 3x |",
        f"| request repair, {c['history_bytes'] / 1e6:.2f} MB history | {c['request_repair_s'] * 1e3:.1f} ms | "
        f"{c['request_floor_s'] * 1e3:.1f} ms (orjson loads+dumps) | {c['request_ratio']:.2f}x | <= 2x |",
        f"| request repair, same history, Moonshot rules | {c['request_repair_moonshot_s'] * 1e3:.1f} ms | "
        f"{c['request_floor_s'] * 1e3:.1f} ms (orjson loads+dumps) | {c['request_moonshot_ratio']:.2f}x | <= 2x |",
        f"| memory, 1 MB argument held | held {m['held_peak_bytes'] / 1e6:.2f} MB, peak "
        f"{m['peak_bytes_while_buffering'] / 1e6:.2f} MB buffering, {m['peak_bytes_at_flush'] / 1e6:.2f} MB at flush "
        f"| - | {m['peak_bytes_while_buffering'] / m['argument_bytes']:.2f}x the argument | bounded |",
        f"| buffer limit, 20 MB argument | most held {m['most_held_with_20mb_argument'] / 2**20:.2f} MiB, "
        f"bypassed: {m['bypassed_past_limit']} | limit {m['limit_bytes'] / 2**20:.0f} MiB | - | <= limit |",
    ]
    if e2e:
        lines += [
            "",
            "| end to end | streams | path | TTFB p50 ms | event latency p50 / p99 ms | events/s | "
            "proxy CPU s / 10k events | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in e2e["runs"]:
            cpu = (
                f"{r['proxy_cpu_s'] / r['events'] * 1e4:.2f}"
                if r.get("proxy_cpu_s") is not None and r["events"]
                else "-"
            )
            lines.append(
                f"| {r['mode']} | {r['concurrency']} x {r['events_per_stream']}"
                f"{' (x' + str(r['rounds']) + ')' if r.get('rounds', 1) > 1 else ''} | {r['path']} | "
                f"{r['ttfb_ms_p50']:.2f} | {r['latency_ms_p50']:.2f} / {r['latency_ms_p99']:.2f} | "
                f"{r['events_per_s']:,.0f} | {cpu} | {r['errors']} |"
            )
        lines += [
            "",
            "| kimiwire vs plain mitmdump (same run) | streams | proxy CPU per event ratio | p50 latency ratio | "
            "TTFB added ms | throughput ratio | target |",
            "|---|---|---|---|---|---|---|",
        ]
        for ratio in e2e["ratios"]:
            cpu_ratio = f"**{ratio['cpu_per_event_ratio']:.2f}**" if ratio.get("cpu_per_event_ratio") else "-"
            lines.append(
                f"| {ratio['mode']} | {ratio['concurrency']} | {cpu_ratio} | {ratio['latency_p50_ratio']:.2f} | "
                f"{ratio['ttfb_added_ms']:+.2f} | {ratio['throughput_ratio']:.2f} | "
                "CPU <= 1.15 (fast); <= 1.10, <= 1 ms, >= 0.90 |"
            )
        pairs = e2e.get("cpu_pairs") or []
        if pairs:
            lines += [
                "",
                "Proxy CPU per event, fast rows (the bold figures above): both proxies serve the same streams at the "
                "same time; each pair's kimiwire/mitmdump ratio, the median in bold:",
                "",
            ]
            lines += [
                f"- {p['concurrency']} x {p['events_per_stream']} (x{p['rounds']}): "
                + ", ".join(f"{r:.2f}" for r in p["pairs"])
                + (f" -> **{p['ratio']:.2f}**" if p["ratio"] else "")
                + (f", {p['errors']} errors" if p["errors"] else "")
                for p in pairs
            ]
        t = e2e["ttfb"]
        lines += [
            "",
            "| time to first byte, sequential streams | direct | mitmdump | kimiwire | added by kimiwire |",
            "|---|---|---|---|---|",
            f"| p50 over {t['direct']['samples']} streams | {t['direct']['p50_ms']:.2f} ms | "
            f"{t['mitmdump']['p50_ms']:.2f} ms | {t['kimiwire']['p50_ms']:.2f} ms | "
            f"{t['kimiwire']['p50_ms'] - t['mitmdump']['p50_ms']:+.2f} ms (target <= 1 ms) |",
        ]
        scale = e2e.get("scale")
        if scale:
            one, two = scale["workers"]["1"], scale["workers"]["2"]
            lines += [
                "",
                f"| behind HAProxy, {scale['concurrency']} fast streams x {scale['events_per_stream']} | events/s | "
                "event latency p50 / p99 ms | errors |",
                "|---|---|---|---|",
                f"| 1 worker | {one['events_per_s']:,.0f} | {one['latency_ms_p50']:.2f} / {one['latency_ms_p99']:.2f} "
                f"| {one['errors']} |",
                f"| 2 workers | {two['events_per_s']:,.0f} | {two['latency_ms_p50']:.2f} / {two['latency_ms_p99']:.2f} "
                f"| {two['errors']} |",
                f"| 2 workers / 1 worker | **{scale['speedup']:.2f}x** | - | target >= 1.6x |",
            ]
            if "cpu" in two:
                split = "; ".join(
                    f"{count} worker{'s' if count != '1' else ''}: "
                    + ", ".join(
                        f"{name} {c['cores']:.2f} cores ({c['us_per_event']:.1f} µs/event)"
                        for name, c in scale["workers"][count]["cpu"].items()
                    )
                    for count in ("1", "2")
                )
                lines += ["", f"Where the two cores went (CPU over the runs): {split}."]
        capacity = e2e.get("paced_capacity")
        if capacity:
            tried = ", ".join(
                f"{c['concurrency']}: p99 {c['latency_ms_p99']:.1f} ms, {c['errors']} errors" for c in capacity["tried"]
            )
            lines += [
                "",
                f"Paced streams (an event every 20 ms) one worker carries with p99 event latency under "
                f"{capacity['p99_limit_ms']:.0f} ms and no errors: **{capacity['most_streams']}** ({tried}).",
            ]
        rss = e2e["rss"]
        lines += [
            "",
            f"Proxy RSS over {rss['streams']} sequential streams: {rss['rss_before'] / 2**20:.1f} MiB -> "
            f"{rss['rss_after'] / 2**20:.1f} MiB ({rss['ratio']:.3f}x, target <= 1.05), errors {rss['errors']}.",
        ]
    return "\n".join(lines)


def _cpu_per_event(row: dict[str, Any]) -> float | None:
    if row.get("proxy_cpu_s") is None or not row["events"]:
        return None
    return row["proxy_cpu_s"] / row["events"]


def _paired_ratio(runs: list[float | None], baseline: list[float | None]) -> float | None:
    """The median over repeats of kimiwire's figure over the baseline's from the same repeat: the
    two ran back to back, so a slow spell of the machine hits both sides of each pair."""
    pairs = [a / b for a, b in zip(runs, baseline, strict=True) if a and b]
    return statistics.median(pairs) if pairs else None


def ratios(e2e: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    by = {(r["mode"], r["concurrency"], r["path"]): r for r in e2e["runs"]}
    together = {pair["concurrency"]: pair for pair in e2e.get("cpu_pairs", [])}
    for (mode, concurrency, path), row in by.items():
        if path != "kimiwire":
            continue
        base = by[(mode, concurrency, "mitmdump")]
        cpu_ratio = _paired_ratio(row["cpu_per_event_runs"], base["cpu_per_event_runs"])
        if mode == "fast" and concurrency in together:
            cpu_ratio = together[concurrency]["ratio"]
        out.append(
            {
                "mode": mode,
                "concurrency": concurrency,
                "latency_p50_ratio": row["latency_ms_p50"] / base["latency_ms_p50"],
                "ttfb_added_ms": row["ttfb_ms_p50"] - base["ttfb_ms_p50"],
                "throughput_ratio": row["events_per_s"] / base["events_per_s"],
                "cpu_per_event_ratio": cpu_ratio,
            }
        )
    return out


def chaos_row(quick: bool) -> dict[str, Any]:
    """Seeded random faults through mitmdump (kimiwire.sim.chaos, as tests/e2e/test_chaos.py, more requests)."""
    from kimiwire.sim import chaos
    from kimiwire.sim.scripted import ScriptedUpstream

    seed, requests, concurrency = 24, (60 if quick else 2000), 32
    options = {
        "kimi_done_grace": 1 / 40,
        "kimi_idle_timeout": 3,
        "kimi_first_byte_timeout": 15,
        "kimi_retry_budget": 3,
        "kimi_retry_backoff": 0.5 / 40,
        "kimi_shutdown_grace": 2 / 40,
        "kimi_capture_dir": "",
    }
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ScriptedUpstream(chaos.ChaosUpstream(seed)) as upstream,
        launch.Mitmdump(upstream.url, pathlib.Path(tmp) / "conf", options) as proxy,
    ):
        report = asyncio.run(chaos.run(proxy.url, seed, range(requests), concurrency))
        rss = rss_bytes(proxy.pid)
    return {**report.summary(), "seconds": time.monotonic() - started, "rss_mb": rss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best or median is kept)")
    parser.add_argument("--core-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small end-to-end runs (a smoke test)")
    parser.add_argument("--layouts-only", action="store_true", help="only section 4, the layout rows")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / ".cache" / "bench" / "latest.json")
    args = parser.parse_args()
    started = time.monotonic()
    if args.layouts_only:
        layouts = layout_rows(args.repeat, args.quick)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "layouts": layouts}, indent=2))
        print(layout_table(layouts))
        return 0
    core_results = core(max(args.repeat, 3))
    e2e = None if args.core_only else end_to_end(args.repeat, args.quick)
    if e2e:
        e2e["ratios"] = ratios(e2e)
        e2e["scale"] = scale_out(args.repeat, args.quick)
        e2e["layouts"] = layout_rows(args.repeat, args.quick)
        e2e["chaos"] = chaos_row(args.quick)
    report = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "core": core_results,
        "e2e": e2e,
        "seconds": time.monotonic() - started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"machine: {report['machine']}")
    print(table(core_results, e2e))
    if e2e:
        print("\n" + layout_table(e2e["layouts"]))
    if e2e and e2e.get("chaos"):
        row = e2e["chaos"]
        print("\n| chaos | requests | faults | lost | seconds | proxy RSS MB |\n|---|---|---|---|---|---|")
        faults = ", ".join(f"{k} {v}" for k, v in row["faults"].items())
        print(f"| seeded | {row['requests']} | {faults} | {row['lost']} | {row['seconds']:.0f} | {row['rss_mb']:.0f} |")
    print(f"\n{report['seconds']:.0f} s; figures also in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
