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
6. Loop gaps: a paced stream's event gaps (p50/p99/max) through mitmdump, captures on, next to a 30 MB
   tool-call history, a 100 MB body refused while it arrives and a gzip bomb (tests/support/loop_gaps.py,
   as tests/e2e/test_e2e_loop_gaps.py: target p99 under 150 ms).

Prints a markdown table and writes the same figures as JSON. Run with ./scripts/bench.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

from bench_core import core  # noqa: E402
from bench_e2e import chaos_row, end_to_end, layout_rows, loop_gaps_row, ratios, scale_out  # noqa: E402
from bench_report import layout_table, machine, table  # noqa: E402


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
        e2e["loop_gaps"] = loop_gaps_row(args.repeat, args.quick)
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
        for lost in row.get("lost_detail", []):
            print(f"\nLost: a `{lost['fault']}` request, status {lost['status']}: {lost['problem']} ({lost})")
    if e2e and e2e.get("loop_gaps"):
        print(
            "\n| a paced stream (event every 10 ms) next to | p50 gap | p99 gap (target < 150 ms) | max gap | status |"
        )
        print("|---|---|---|---|---|")
        for name, row in e2e["loop_gaps"].items():
            statuses = "/".join(str(status) for status in row["statuses"])
            print(f"| {name} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | {row['max_ms']:.0f} ms | {statuses} |")
    print(f"\n{report['seconds']:.0f} s; figures also in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
