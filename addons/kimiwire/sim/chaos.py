"""A seeded random-fault upstream and the client side that checks what came through the proxy.

Each request carries its number in its message; a seed and that number pick its fault (`plan`),
so a run is the same for the same seed. The first attempt of a request plays its fault; every
further attempt of it (the proxy's retries) answers cleanly. What the client must receive
follows from the fault (`expect_full`): the whole answer, byte for byte in its text, or, when the
upstream failed after sending part of it, exactly that part, then an error event and [DONE].
Used by tests/e2e/test_chaos.py and scripts/bench (the chaos row).
"""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .scripted import RecordedRequest, Reply, json_reply, sse_reply

Fault = Literal["clean", "json", "gzip", "empty", "status_retried", "status_kept", "stall", "reset"]
# The faults of a first attempt, with their weights.
FAULTS: dict[Fault, int] = {
    "clean": 6,
    "json": 2,  # a non-streamed request
    "gzip": 2,  # the stream compressed despite accept-encoding: identity
    "empty": 2,  # a turn with no content: retried
    "status_retried": 3,  # 429/500/503 with Retry-After: 0: retried
    "status_kept": 1,  # 429/500/503 with a Retry-After past the retry budget: passed on
    "stall": 1,  # some content, then silence: the idle timeout ends it
    "reset": 2,  # some content, then a reset connection
}
STATUSES = (429, 500, 503)
WORDS = 12
_ID = re.compile(rb"chaos request (\d+)")


@dataclass(frozen=True, slots=True)
class Plan:
    number: int
    fault: Fault
    stream: bool
    status: int = 0
    cut_after: int = 0  # content events sent before a stall or reset

    @property
    def text(self) -> str:
        return "".join(self.words)

    @property
    def words(self) -> list[str]:
        return [f"w{self.number}.{i} " for i in range(WORDS)]

    @property
    def expect_full(self) -> bool:
        return self.fault not in ("status_kept", "stall", "reset")


def plan(seed: int, number: int) -> Plan:
    rng = random.Random(seed * 1_000_003 + number)
    fault = rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
    stream = fault != "json"
    status = rng.choice(STATUSES) if fault.startswith("status") else 0
    cut_after = rng.randint(1, WORDS - 1) if fault in ("stall", "reset") else 0
    return Plan(number, fault, stream, status, cut_after)


def request_body(p: Plan) -> bytes:
    return orjson.dumps(
        {"model": "kimi-k2", "stream": p.stream, "messages": [{"role": "user", "content": f"chaos request {p.number}"}]}
    )


def _chunk(p: Plan, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": f"chatcmpl-{p.number}", "object": "chat.completion.chunk", "model": "kimi-k2", "choices": [choice]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def stream_events(p: Plan, words: list[str], finish: bool = True) -> list[bytes]:
    events = [_chunk(p, {"role": "assistant", "content": ""})]
    events += [_chunk(p, {"content": word}) for word in words]
    if finish:
        events += [_chunk(p, {}, "stop"), b"data: [DONE]\n\n"]
    return events


def _completion(p: Plan) -> dict[str, Any]:
    message = {"role": "assistant", "content": p.text}
    return {
        "id": f"chatcmpl-{p.number}",
        "object": "chat.completion",
        "model": "kimi-k2",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


class ChaosUpstream:
    """The responder of a ScriptedUpstream: each request's first attempt plays its planned fault."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.attempts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        found = _ID.search(request.body)
        if found is None:
            return json_reply({"error": {"message": "not a chaos request"}}, 400)
        number = int(found.group(1))
        with self._lock:
            self.attempts[number] += 1
            attempt = self.attempts[number]
        p = plan(self.seed, number)
        if not p.stream:
            return json_reply(_completion(p))
        if attempt > 1 or p.fault == "clean":
            return sse_reply(stream_events(p, p.words))
        if p.fault == "gzip":
            whole = gzip.compress(b"".join(stream_events(p, p.words)))
            third = len(whole) // 3 + 1
            reply = sse_reply([whole[i : i + third] for i in range(0, len(whole), third)])
            reply.headers["content-encoding"] = "gzip"
            return reply
        if p.fault == "empty":
            return sse_reply(
                [_chunk(p, {"role": "assistant", "content": ""}), _chunk(p, {}, "stop"), b"data: [DONE]\n\n"]
            )
        if p.fault.startswith("status"):
            retry_after = "0" if p.fault == "status_retried" else "3600"
            body = {"error": {"message": f"chaos {p.status}", "type": "server_error", "code": p.status}}
            reply = json_reply(body, p.status)
            reply.headers["retry-after"] = retry_after
            return reply
        events = stream_events(p, p.words[: p.cut_after], finish=False)
        if p.fault == "stall":
            return sse_reply(events, hold_open=60)
        return sse_reply(events, reset_after=len(events))


@dataclass
class Outcome:
    plan: Plan
    status: int = 0
    text: str = ""
    errors: list[str] = field(default_factory=list)  # error events' types
    done: int = 0  # [DONE] events
    problem: str | None = None  # why this request counts as lost


@dataclass
class ChaosReport:
    outcomes: list[Outcome]

    @property
    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem is not None]

    @property
    def faults(self) -> Counter[str]:
        return Counter(o.plan.fault for o in self.outcomes)

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.outcomes), "faults": dict(sorted(self.faults.items())), "lost": len(self.lost)}


def judge(o: Outcome) -> str | None:
    """Why the client's answer is wrong for its plan, or None."""
    p = o.plan
    if p.fault == "status_kept":
        return None if o.status == p.status else f"status {o.status}, the upstream answered {p.status}"
    if o.status != 200:
        return f"status {o.status}"
    if not p.stream:
        return None if o.text == p.text else f"content {o.text!r}"
    if o.done != 1:
        return f"{o.done} [DONE] events"
    if p.expect_full:
        if o.errors:
            return f"error events {o.errors}"
        return None if o.text == p.text else f"text {o.text!r}, expected {p.text!r}"
    if len(o.errors) != 1:
        return f"error events {o.errors} after a {p.fault}"
    expected = "".join(p.words[: p.cut_after])
    return None if o.text == expected else f"text {o.text!r} after a {p.fault}, expected {expected!r}"


def read_events(body: bytes, o: Outcome) -> None:
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                o.done += 1
                continue
            if o.done:
                o.errors.append("event after [DONE]")
            event = orjson.loads(data)
            if "error" in event:
                o.errors.append(str(event["error"].get("type")))
                continue
            for choice in event.get("choices") or []:
                o.text += (choice.get("delta") or {}).get("content") or ""


async def one_request(client: Any, url: str, p: Plan) -> Outcome:
    """`client`: an httpx.AsyncClient. A torn body, a timeout or any client error is a lost request."""
    o = Outcome(p)
    try:
        response = await client.post(
            f"{url}/v1/chat/completions", content=request_body(p), headers={"content-type": "application/json"}
        )
        o.status = response.status_code
        if o.status == 200 and p.stream:
            read_events(response.content, o)
        elif o.status == 200:
            o.text = response.json()["choices"][0]["message"]["content"]
    except Exception as exc:
        o.problem = f"{type(exc).__name__}: {exc}"
        return o
    o.problem = judge(o)
    return o


async def run(url: str, seed: int, numbers: range, concurrency: int, timeout: float = 30.0) -> ChaosReport:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    # Pooled keep-alive connections, as the SDKs keep them: a connection on which the proxy ended a
    # response itself (an error event and [DONE], a JSON error) serves the next request.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def bounded(number: int) -> Outcome:
            async with gate:
                return await one_request(client, url, plan(seed, number))

        outcomes = await asyncio.gather(*(bounded(n) for n in numbers))
    return ChaosReport(list(outcomes))


def request_number(body: bytes | None) -> int | None:
    found = _ID.search(body or b"")
    return int(found.group(1)) if found else None
