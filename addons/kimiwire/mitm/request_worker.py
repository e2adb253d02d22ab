"""Large request bodies are decoded and repaired off the event loop.

Every stream the proxy serves runs on one event loop. Request repair takes time in proportion to
the tool-call history (about a quarter of a second per MB measured on this project's test machine),
so a long history done on the loop held every other stream's events back for seconds. Bodies from
OFFLOAD_BYTES up go to one worker thread, one at a time (two would only contend for the GIL); the
`request` hook awaits it, mitmproxy holds that flow meanwhile and serves the others. The repair
code is the same sans-IO code: the worker only calls it. What is left on the loop is the GIL the
worker takes: pure Python gives it back every switch interval, orjson holds it for one whole
document, which for the largest bodies was the gap left.

So the largest bodies (from PROCESS_BYTES) are parsed in a worker process instead, which has a GIL
of its own: the body goes there as bytes, the repaired body comes back as bytes, and the repair log
(a long history's hundred thousand entries) comes back as pieces of a few thousand entries each,
unpickled here in the thread: one piece at a time holds the GIL briefly, where the whole log in one
pickle would hold it for as long as a parse. One worker process repairs, one large body at a time
as in the thread (on two cores more would take the event loop's core), started at the first such
body; a second one redacts large captures (mitm/large_capture.py). A worker that dies or a call that
raises costs the repair only (Raised), and the next body gets a fresh pool. Where worker processes
fail one pool after another without one answer (an interpreter that cannot spawn itself, such as a
frozen mitmdump), the large bodies go back to the thread, as they do when kimi_worker_processes is
off. Smaller bodies stay in the thread: a process hop costs copies. A flow whose request was repaired
in the worker process carries WORKER_PROCESS_FLAG.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import pickle
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.repair import RequestRepairResult, repair_request_body
from kimiwire.wire.servers.policy import Policy

T = TypeVar("T")
logger = logging.getLogger("kimiwire")

# Smaller bodies are repaired in well under a millisecond or two: a thread hop would cost more.
OFFLOAD_BYTES = 256 * 1024
# From this size a body is parsed in a worker process: orjson holds the GIL for a whole document,
# and every stream on the loop waits for it; below it that wait is shorter than a process hop's copies.
PROCESS_BYTES = 2 * 1024 * 1024
# Pools that broke in a row, none of their workers having answered, before the worker processes
# are given up for this run and large bodies are repaired in the thread again.
BROKEN_POOLS_BEFORE_THREAD = 2
# The capture's worker process runs at this lower CPU priority: a capture can wait, the repair a
# client waits for and the event loop should not (on two cores they share them).
CAPTURE_NICENESS = 10
# Repair log entries per piece sent back from the worker process.
_ENTRIES_PER_PIECE = 2000
# A worker process idle this long exits: parsing a large body leaves its interpreter holding the
# memory it grew to, which only ending the process gives back; the next large body starts another.
IDLE_WORKER_SECONDS = 60.0
# The flag (mitm/flow_record.py) and comment word of a flow whose request was repaired in the worker process.
WORKER_PROCESS_FLAG = "request_in_worker_process"


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


@dataclass(frozen=True, slots=True)
class RepairedElsewhere:
    """A repair made in the worker process, as it travels back: the result with its log left empty,
    the log's counts and summary, and its entries for the record pickled in pieces."""

    result: RequestRepairResult
    counts: dict[str, int]
    summary: str
    pieces: list[bytes]

    def unpacked(self) -> tuple[RequestRepairResult, RecordedRepairs]:
        """In the thread: the result and the record's repairs, one piece of entries at a time."""
        entries: list[dict[str, Any]] = []
        for piece in self.pieces:
            entries.extend(pickle.loads(piece))
        return self.result, RecordedRepairs(entries, self.counts, self.summary)


def repair_elsewhere(raw: bytes, policy: Policy) -> RepairedElsewhere:
    """The request repair as the worker process runs it."""
    result, recorded = repair_and_record(raw, policy)
    entries = recorded.entries
    pieces = [
        pickle.dumps(entries[start : start + _ENTRIES_PER_PIECE], pickle.HIGHEST_PROTOCOL)
        for start in range(0, len(entries), _ENTRIES_PER_PIECE)
    ]
    return RepairedElsewhere(dataclasses.replace(result, log=RepairLog()), recorded.counts, recorded.summary, pieces)


class ProcessLane:
    """One worker process, started at the first call (spawn: a fresh interpreter; forking a process
    that runs threads is unsafe), one call at a time."""

    def __init__(self, niceness: int = 0) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._broken_pools = 0  # in a row, since its worker last answered
        self._niceness = niceness  # added to the worker's: background work yields the CPU to the rest
        self._running = 0  # calls under way
        self._retire: asyncio.TimerHandle | None = None  # ends the idle worker

    @property
    def works(self) -> bool:
        """The lane is used: its worker processes have not failed pool after pool without one answer."""
        return self._broken_pools < BROKEN_POOLS_BEFORE_THREAD

    async def run(self, call: Callable[..., T], *args: Any) -> T | Raised:
        """`call(*args)` in the worker process (`call` and its arguments are pickled): its result, or
        what it raised, or the pool's error when the worker could not start or died (as Raised). The
        worker exits once it has been idle for `IDLE_WORKER_SECONDS`."""
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        self._running += 1
        try:
            return await self._run(call, *args)
        finally:
            self._running -= 1
            if self._running == 0 and self._pool is not None:
                self._retire = asyncio.get_running_loop().call_later(IDLE_WORKER_SECONDS, self.close)

    async def _run(self, call: Callable[..., T], *args: Any) -> T | Raised:
        try:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(1, context, _lower_priority, (self._niceness,))
            future = self._pool.submit(call, *args)  # starts the worker: may fail to
        except Exception as exc:
            return self._broken(exc)
        try:
            answer = await asyncio.wrap_future(future)
        except BrokenExecutor as exc:  # the worker died: this call's work is lost, the next gets a new pool
            return self._broken(exc)
        except Exception as exc:
            return Raised(exc)
        self._broken_pools = 0
        return answer

    def _broken(self, exc: Exception) -> Raised:
        self.close()
        self._broken_pools += 1
        if not self.works:
            logger.warning("kimiwire: worker processes keep failing (%r); large bodies are handled in a thread", exc)
        return Raised(exc)

    @property
    def started(self) -> bool:
        """A worker process is up (or starting)."""
        return self._pool is not None

    def close(self) -> None:
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        if self._pool is not None:
            with contextlib.suppress(Exception):  # a pool that never started may not shut down cleanly
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class RequestWorker:
    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        # Repairs and capture redactions each have a worker process: the repair, which the client
        # waits for, never queues behind the redaction of the flow before it (an agent sends its
        # history again with every turn).
        self.repairs = ProcessLane()
        self.captures = ProcessLane(CAPTURE_NICENESS)
        self._use_processes = True  # kimi_worker_processes

    def use_processes(self, allowed: bool) -> None:
        """kimi_worker_processes: false keeps every body in this process (the thread), and ends the
        worker processes started already."""
        self._use_processes = allowed
        if not allowed:
            self.repairs.close()
            self.captures.close()

    def repairs_in_process(self, size: int) -> bool:
        """A body of `size` bytes is repaired in the worker process (`repair`), not in the thread."""
        return size >= PROCESS_BYTES and self.processes_work

    def captures_in_process(self, size: int) -> bool:
        """A body of `size` bytes is redacted for the capture in its worker process (mitm/large_capture.py)."""
        return size >= PROCESS_BYTES and self._use_processes and self.captures.works

    async def repair(self, raw: bytes, policy: Policy) -> tuple[RequestRepairResult, RecordedRepairs] | Raised:
        """`raw` repaired off the loop: in the thread, or in a worker process from PROCESS_BYTES."""
        if not self.repairs_in_process(len(raw)):
            return await self.run(repair_and_record, raw, policy)
        done = await self.in_process(repair_elsewhere, raw, policy)
        if isinstance(done, Raised):
            return done
        return await self.run(RepairedElsewhere.unpacked, done)

    async def in_process(self, call: Callable[..., T], *args: Any) -> T | Raised:
        """`call(*args)` in the repair worker process (ProcessLane.run)."""
        return await self.repairs.run(call, *args)

    @property
    def processes_work(self) -> bool:
        return self._use_processes and self.repairs.works

    async def run(self, call: Callable[..., T], *args: Any) -> T | Raised:
        """`call(*args)` in the worker thread: its result, or what it raised (as Raised)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kimiwire-request-repair")
        return await asyncio.get_running_loop().run_in_executor(self._executor, _caught, call, args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.repairs.close()
        self.captures.close()


def _lower_priority(niceness: int) -> None:
    """A worker process's first act: its CPU priority lowered by `niceness` (where the OS has one)."""
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)


def _caught(call: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return call(*args)
    except Exception as exc:
        return Raised(exc)
