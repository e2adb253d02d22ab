"""Large request bodies are decoded and repaired off the event loop.

Every stream the proxy serves runs on one event loop. Request repair takes time in proportion to
the tool-call history (about a quarter of a second per MB measured on this project's test machine),
so a long history done on the loop held every other stream's events back for seconds. Bodies from
OFFLOAD_BYTES up go to one worker thread, one at a time (two would only contend for the GIL); the
`request` hook awaits it, mitmproxy holds that flow meanwhile and serves the others. The repair
code is the same sans-IO code: the worker only calls it. What is left on the loop is the GIL the
worker takes: pure Python gives it back every switch interval, orjson holds it for one whole
document, which for the largest bodies is the gap left (docs/design.md, "Ending streams").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kimiwire.wire.policy import Policy
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.repair import RequestRepairResult, repair_request_body

T = TypeVar("T")

# Smaller bodies are repaired in well under a millisecond or two: a thread hop would cost more.
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Raised:
    """What a call in the worker raised, handed back to the loop to be dealt with there."""

    error: Exception


@dataclass(frozen=True, slots=True)
class RecordedRepairs:
    """A repair log as the flow's record keeps it (entries with their phase), its counts by kind and
    its one-line summary: for a long history a hundred thousand entries, made where the repair ran."""

    entries: list[dict[str, Any]]
    counts: dict[str, int]
    summary: str

    @classmethod
    def of(cls, log: RepairLog, phase: str) -> RecordedRepairs:
        entries = log.as_list()
        for entry in entries:
            entry["phase"] = phase
        counts = log.counts()
        return cls(entries, dict(counts), " ".join(f"{k}={n}" for k, n in sorted(counts.items())))


def repair_and_record(raw: bytes, policy: Policy) -> tuple[RequestRepairResult, RecordedRepairs]:
    """The request repair as the worker runs it: the result and its log, ready for the record."""
    result = repair_request_body(raw, policy)
    return result, RecordedRepairs.of(result.log, "request")


class RequestWorker:
    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, call: Callable[..., T], *args: Any) -> T | Raised:
        """`call(*args)` in the worker thread: its result, or what it raised (as Raised)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kimiwire-request-repair")
        return await asyncio.get_running_loop().run_in_executor(self._executor, _caught, call, args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _caught(call: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return call(*args)
    except Exception as exc:
        return Raised(exc)
