"""The benchmark's report (scripts/bench.py): the machine, and the markdown tables of every section."""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Any


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
            "p99 latency ratio | TTFB added ms | throughput ratio | target |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ratio in e2e["ratios"]:
            cpu_ratio = f"**{ratio['cpu_per_event_ratio']:.2f}**" if ratio.get("cpu_per_event_ratio") else "-"
            lines.append(
                f"| {ratio['mode']} | {ratio['concurrency']} | {cpu_ratio} | {ratio['latency_p50_ratio']:.2f} | "
                f"{ratio['latency_p99_ratio']:.2f} | {ratio['ttfb_added_ms']:+.2f} | {ratio['throughput_ratio']:.2f} | "
                f"CPU <= 1.10{'; p99 <= 1.15 at 64' if ratio['mode'] == 'paced' else ''} |"
            )
        pairs = e2e.get("cpu_pairs") or []
        if pairs:
            lines += [
                "",
                "Proxy CPU per event (the bold figures above): both proxies serve the same streams at the same time; "
                "each pair's kimiwire/mitmdump ratio, the median in bold (paced rows: then each pair's p99 event "
                "latency ratio, whose median is the table's p99 figure):",
                "",
            ]
            lines += [
                f"- {p.get('mode', 'fast')} {p['concurrency']} x {p['events_per_stream']} (x{p['rounds']}): "
                + ", ".join(f"{r:.2f}" for r in p["pairs"])
                + (f" -> **{p['ratio']:.2f}**" if p["ratio"] else "")
                + (
                    "; p99 " + ", ".join(f"{r:.2f}" for r in p["p99_pairs"]) + f" -> {p['p99_ratio']:.2f}"
                    if p.get("mode") == "paced" and p.get("p99_ratio")
                    else ""
                )
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
