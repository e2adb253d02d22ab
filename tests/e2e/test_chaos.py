"""Chaos: a few hundred requests at concurrency through mitmdump against a seeded random-fault
upstream (kimiwire.sim.chaos: stalls, resets, 429/500/503 with Retry-After, empty turns, gzip SSE,
non-streamed turns). Every client answer is well framed and exactly what its fault allows; every
request is captured once and counted with one ending; memory stays flat; no addon error."""

import asyncio
import os
import re
from collections import Counter

import httpx
from kimiwire.sim import chaos
from kimiwire.sim.scripted import sse_reply

from tests.support.proxied import proxied
from tests.support.upstream import json_reply

SEED = 24
REQUESTS = int(os.environ.get("KIMIWIRE_CHAOS_REQUESTS", "300"))  # the soak: 2000
CONCURRENCY = 16
# Every time limit at its default divided by one factor (kimi_timeout_scale), so their ratios stay
# those users get; the shutdown grace is not a time limit of a flow and is scaled alike by hand.
SCALE = 40
OPTIONS = {"kimi_timeout_scale": 1 / SCALE, "kimi_shutdown_grace": 2 / SCALE}
RSS_GROWTH_LIMIT_MB = 25


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _addon_errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r"kimiwire: .* failed on |Traceback|addon\.error=", line)]


def test_chaos_through_mitmdump(tmp_path):
    upstream_plan = chaos.ChaosUpstream(SEED)
    with proxied(upstream_plan, tmp_path, OPTIONS, save_flows=False) as p:
        half = REQUESTS // 2
        rss_at_start = _rss_mb(p.pid)
        first = asyncio.run(chaos.run(p.url, SEED, range(half), CONCURRENCY))
        rss_after_first = _rss_mb(p.pid)
        second = asyncio.run(chaos.run(p.url, SEED, range(half, REQUESTS), CONCURRENCY))
        rss_after_second = _rss_mb(p.pid)
        stats = httpx.get(f"{p.url}/_kimiwire/health", timeout=5).json()
    report = chaos.ChaosReport(first.outcomes + second.outcomes)
    faults = report.faults
    print(  # (pytest -s) the soak's numbers
        f"chaos: {REQUESTS} requests, faults {dict(faults)}, lost {len(report.lost)}, "
        f"addon errors {len(_addon_errors(p.output))}, "
        f"RSS {rss_at_start:.0f}, {rss_after_first:.0f} at half, {rss_after_second:.0f} MB at end, "
        f"endings {sum(stats['endings'].values())} for {stats['flows']} flows, captured {stats['captured']} "
        f"(lost {stats['capture_lost']}), active tasks {stats['active_tasks']}"
    )
    assert all(faults[kind] >= 3 for kind in chaos.FAULTS), faults  # the seed drives every fault
    assert not report.lost, Counter((o.plan.fault, str(o.problem)[:90]) for o in report.lost)

    # One flow, one ending and one capture record per request; nothing left open.
    assert stats["flows"] == REQUESTS and sum(stats["endings"].values()) == REQUESTS, stats
    assert stats["captured"] == REQUESTS and stats["capture_lost"] == 0 and stats["active_tasks"] == 0, stats
    [capture] = p.capture_files()
    numbers = Counter(chaos.request_number(flow.request.content) for flow in p.read_flows(capture))
    assert numbers == Counter(range(REQUESTS)), [n for n, k in numbers.items() if k != 1]

    # Retries asked each failed first attempt once more; the stats say so.
    retried = {o.plan.number for o in report.outcomes if o.plan.fault in ("empty", "status_retried")}
    assert all(upstream_plan.attempts[n] == 2 for n in retried)
    assert stats["endings"].get("retried", 0) == len(retried), stats["endings"]

    assert rss_after_second - rss_after_first < RSS_GROWTH_LIMIT_MB, (rss_after_first, rss_after_second)
    assert not _addon_errors(p.output), _addon_errors(p.output)[:5]


def test_chaos_is_the_same_for_the_same_seed():
    plans = [chaos.plan(SEED, n) for n in range(REQUESTS)]
    assert plans == [chaos.plan(SEED, n) for n in range(REQUESTS)]
    assert plans != [chaos.plan(SEED + 1, n) for n in range(REQUESTS)]


TORN_RETRY = chaos.Plan(0, "reset", True, cut_after=3)


def _status_then_torn_retry(request):
    """First attempt 503 (Retry-After: 0); the retry streams part of an answer, then resets."""
    first = not torn_retry_attempts
    torn_retry_attempts.append(request)
    if first:
        reply = json_reply({"error": {"message": "busy", "type": "server_error"}}, 503)
        reply.headers["retry-after"] = "0"
        return reply
    events = chaos.stream_events(TORN_RETRY, TORN_RETRY.words[: TORN_RETRY.cut_after], finish=False)
    return sse_reply(events, reset_after=len(events))


torn_retry_attempts: list = []


def test_a_retry_that_breaks_partway_ends_well_formed_captured_and_counted_once(tmp_path):
    torn_retry_attempts.clear()
    p_plan = TORN_RETRY
    with proxied(_status_then_torn_retry, tmp_path, OPTIONS) as p:
        upstream = p.upstream
        response = httpx.post(
            f"{p.url}/v1/chat/completions",
            content=chaos.request_body(p_plan),
            headers={"content-type": "application/json"},
            timeout=20,
        )
        stats = httpx.get(f"{p.url}/_kimiwire/health", timeout=5).json()
    assert len(upstream.requests) == 2  # the first attempt and its retry
    assert not _addon_errors(p.output), _addon_errors(p.output)[:3]
    assert stats["captured"] == 1 and sum(stats["endings"].values()) == 1 and stats["active_tasks"] == 0, stats
    # The same well-formed answer as a first attempt that broke so: what came, an error event, [DONE].
    outcome = chaos.Outcome(p_plan, response.status_code)
    chaos.read_events(response.content, outcome)
    assert chaos.judge(outcome) is None, (response.status_code, response.text[:300], outcome)
