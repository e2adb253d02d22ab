"""Which step of request repair costs what on the benchmark's 1 MB agent history (scripts/bench_core.py).

First the bench's own rows (thread-CPU medians; the floor, orjson loads+dumps, and both policies
in the same rounds, so their ratios hold on a shared machine), then each step of
`repair_request_body` wrapped with a thread-CPU timer, as a median and in floors (a wrapper costs
about a microsecond: read the small steps as upper bounds). Steps a policy skips do not show.
Run: `.venv/bin/python scripts/profile_request_repair.py [ROUNDS]` (30 by default).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
from bench_core import MOONSHOT_POLICY, POLICY, cpu_medians, long_history
from kimiwire.wire.codecs import json_codec
from kimiwire.wire.request import compat, repair

_STEP_TIMES: dict[str, int] = defaultdict(int)


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            _STEP_TIMES[name] += time.thread_time_ns() - start

    return wrapper


_REPAIR_STEPS = (
    "facts_from_body",
    "scan_messages",
    "_refused_before_upstream",
    "tool_name_renames",
    "apply_request_compat",
    "rename_tools",
    "moonshot_hygiene",
    "canonicalize_tool_ids",
    "apply_reasoning_policy",
    "repair_history_arguments",
    "tool_results_in_place",
    "translate_thinking_fields",
)


def _instrument() -> Callable[[], None]:
    """Wraps the steps (and the codec) where `repair` looks them up; returns the undo."""
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, name: str) -> None:
        if not hasattr(owner, attr):
            return
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, _timed(name, getattr(owner, attr)))

    for step in _REPAIR_STEPS:
        wrap(repair, step, step)
    by_flavor = compat._RULES_BY_FLAVOR
    saved.append((compat, "_RULES_BY_FLAVOR", by_flavor))
    compat._RULES_BY_FLAVOR = {
        flavor: tuple(dataclasses.replace(rule, fix=_timed(rule.kind, rule.fix)) for rule in rules)
        for flavor, rules in by_flavor.items()
    }
    wrap(json_codec, "decode", "decode")
    wrap(json_codec.Decoded, "encode", "encode")

    def undo() -> None:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)

    return undo


def measure(rounds: int) -> None:
    body = long_history()
    fns: dict[str, Callable[[bytes], Any]] = {
        "floor": lambda b: orjson.dumps(orjson.loads(b)),
        "selfhosted": lambda b: repair.repair_request_body(b, POLICY),
        "moonshot": lambda b: repair.repair_request_body(b, MOONSHOT_POLICY),
    }
    medians = cpu_medians(fns, body, rounds)  # the bench's own alternated rounds (seconds)
    floor = medians["floor"]
    print(f"history {len(body)} bytes, {rounds} rounds, thread CPU medians")
    for name, value in medians.items():
        print(f"  {name:<12} {value * 1e3:7.3f} ms  {value / floor:5.2f}x floor")

    undo = _instrument()
    try:
        per_step: dict[str, dict[str, list[int]]] = {"selfhosted": defaultdict(list), "moonshot": defaultdict(list)}
        floors: list[int] = []
        for _ in range(rounds):
            gc.collect()
            start = time.thread_time_ns()
            orjson.dumps(orjson.loads(body))
            floors.append(time.thread_time_ns() - start)
            for label, policy in (("selfhosted", POLICY), ("moonshot", MOONSHOT_POLICY)):
                _STEP_TIMES.clear()
                gc.collect()
                start = time.thread_time_ns()
                repair.repair_request_body(body, policy)
                per_step[label]["(whole, instrumented)"].append(time.thread_time_ns() - start)
                for step, spent in _STEP_TIMES.items():
                    per_step[label][step].append(spent)
        floor = statistics.median(floors)
        print(f"instrumented rounds: floor {floor / 1e6:.3f} ms; each step's median in ms and in floors")
        for label, steps in per_step.items():
            print(f"{label}:")
            for step, values in sorted(steps.items(), key=lambda item: -statistics.median(item[1])):
                value = statistics.median(values)
                print(f"  {step:<28} {value / 1e6:7.3f}  {value / floor:5.2f}")
    finally:
        undo()


if __name__ == "__main__":
    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
