"""Large request bodies are decoded and repaired off the event loop.

Every stream the proxy serves runs on one event loop. Request repair takes time in proportion to
the tool-call history (about a quarter of a second per MB measured on this project's test machine),
so a long history done on the loop held every other stream's events back for seconds. Bodies from
OFFLOAD_BYTES up go to one worker thread, one at a time (two would only contend for the GIL); the
`request` hook awaits it, mitmproxy holds that flow meanwhile and serves the others. The repair
code is the same sans-IO code: the worker only calls it. What is left on the loop is the GIL the
worker takes: pure Python gives it back every switch interval (5 ms), orjson holds it for one whole
document, which for the largest bodies is the gap left (see the README's Performance section).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# Smaller bodies are repaired in well under a millisecond or two: a thread hop would cost more.
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Raised:
    """What a call in the worker raised, handed back to the loop to be dealt with there."""

    error: Exception


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
