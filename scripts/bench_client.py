"""What the benchmarks measure with (scripts/bench.py): streams from the simulator read on
loopback (time to first byte, per-event latency from the simulator's stamps, events/s), and a
process's CPU time and RSS from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import statistics
import time
from typing import Any

import orjson

_SENT = re.compile(rb"\[sent_at=(\d+)\]")  # the simulator's stamp (sim/server.py STAMP_FORMAT)


class Dechunked:
    """A chunked HTTP/1 body's payload as it arrives: the chunk framing taken out, so a stamp split
    across two chunks is still one stamp."""

    def __init__(self) -> None:
        self._pending = b""
        self._left = 0  # payload bytes of the current chunk still to come
        self.ended = False  # the last (zero-size) chunk came

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        out = []
        while self._pending and not self.ended:
            if self._left:
                piece = self._pending[: self._left]
                out.append(piece)
                self._left -= len(piece)
                self._pending = self._pending[len(piece) :]
                continue
            line_end = self._pending.find(b"\r\n", 2 if self._pending.startswith(b"\r\n") else 0)
            if line_end < 0:
                break
            size_line = self._pending[:line_end].strip()
            self._pending = self._pending[line_end + 2 :]
            if not size_line:
                continue
            self._left = int(size_line.split(b";")[0], 16)
            self.ended = self._left == 0
        return b"".join(out)


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
    body_bytes = Dechunked()
    carry = b""  # the end of the body read so far: a stamp may begin in it
    done = False
    status_ok = headers.startswith(b"HTTP/1.1 200")
    try:
        while not body_bytes.ended:
            data = await asyncio.wait_for(reader.read(65536), 30)
            now = time.monotonic_ns()
            if not data:
                break
            window = carry + body_bytes.feed(data)
            for match in _SENT.finditer(window):
                if match.end() > len(carry):  # (one that ended in the carry was counted before)
                    latencies.append(now - int(match.group(1)))
            carry = window[-48:]
        done = body_bytes.ended and b"[DONE]" in carry
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


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def descendants(root: int, name: str) -> list[int]:
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


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        merged[key] = statistics.median(values) if values and key != "errors" else (sum(values) if values else None)
    merged["cpu_per_event_runs"] = [cpu_per_event(r) for r in runs]  # in run order, to pair with the baseline's
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


def cpu_per_event(row: dict[str, Any]) -> float | None:
    if row.get("proxy_cpu_s") is None or not row["events"]:
        return None
    return row["proxy_cpu_s"] / row["events"]


def paired_ratio(runs: list[float | None], baseline: list[float | None]) -> float | None:
    """The median over repeats of kimiwire's figure over the baseline's from the same repeat: the
    two ran back to back, so a slow spell of the machine hits both sides of each pair."""
    pairs = [a / b for a, b in zip(runs, baseline, strict=True) if a and b]
    return statistics.median(pairs) if pairs else None
