"""Retries upstream inside one flow, so a client never gets a silent empty turn while attempts
remain (issue 13). The decisions are sans-IO (`wire/retry_policy.py`, `wire/response/turn_gate.py`,
`wire/response/continuation.py`); this module makes the extra attempts and delivers their answer.

Mechanism, and why
------------------
mitmproxy has no public API for a second upstream exchange inside one flow. The first attempt is
mitmproxy's own exchange, as always. Every further attempt is made from a hook that mitmproxy
awaits before it answers the client, with a well-kept async HTTP client (httpx: connection
pooling, HTTP/1.1 framing, TLS and streaming reads done right, where hand-written socket code would
not be), configured from mitmproxy's own upstream TLS options (`ssl_insecure`,
`ssl_verify_upstream_trusted_ca`, `ssl_verify_upstream_trusted_confdir`) and never from proxy
environment variables:
- a streamed turn that ends without an answer (or stalls before one): the `response` hook. For a
  streamed response mitmproxy calls it after `stream(b"")` and before it ends the client's body,
  so the body is still open; what the retry produces is written into it through
  `proxy_internals.send_to_client` (one synthetic event inside the HttpLayer, the technique that
  already ends stalled streams; only the flow's HttpStream waits for the hook).
- a non-streamed turn, or an error status before anything was sent: the `response` hook again,
  which replaces the response before mitmproxy sends it.
- a connection failure before response headers: the `error` hook; the answer goes out through the
  error-answer path of `proxy_internals` (a whole response instead of mitmproxy's error page).
Alternatives rejected: re-driving mitmproxy's HttpStream to send the request again (its state
machine, connection pool and hook order are private, far more coupling than one event); deciding
in `responseheaders` (an empty turn is known only at its end); buffering every stream until its
end (costs every client its streaming). Limits: extra attempts do not pass through other addons'
request hooks, and HTTP/2 clients get mitmproxy's error page when the first attempt fails before
headers (as today).

What the client sees
--------------------
One response: one role chunk, one `[DONE]`, one chunk id, tool-call indexes from 0 and canonical
ids as if the answer had come first time (each attempt gets a fresh repairer; `Continuation`
rewrites the rest). The gate holds only a turn's ending and its whole tool calls until the turn
proves to have an answer; the role chunk and reasoning reach the client live, so after a
reasoning-only attempt the client's message holds that reasoning followed by the retry's. When
attempts run out the client gets the failure made explicit: an `upstream_empty_turn` error event
and `[DONE]` (502 JSON non-streamed) for an empty turn, the last attempt's calls as they are for
invalid calls, the last upstream error otherwise. A client that leaves cancels the retry (its
upstream request is closed). Each attempt is recorded in `flow.metadata["kimiwire"]["attempts"]`
(why, status, timing, bytes, the raw upstream body), counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpx
import orjson
from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState

from kimiwire.mitm import proxy_internals
from kimiwire.wire import chat_exchanges
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openai_errors import error_event
from kimiwire.wire.policy import Policy
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.continuation import Continuation, completion_events
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.turn_gate import (
    DELIVERED_AS_CAME,
    TurnGate,
    completion_seen,
    judge,
    upstream_started_calls,
)
from kimiwire.wire.retry_policy import RETRY_STATUSES, RetryPolicy, decide, retry_after_seconds
from kimiwire.wire.sse import DONE_EVENT
from kimiwire.wire.stream_endings import EndingLimits

logger = logging.getLogger("kimiwire")

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"upgrade", b"proxy-connection"}
)
_MAX_ERROR_BODY = 1024 * 1024
EMPTY_TURN_MESSAGE = "kimiwire: the upstream ended the turn without an answer ({detail}) after {attempts} attempt(s)"


class ClientGone(Exception):
    """The client left while a retry was under way."""


@dataclass
class Failure:
    """Why an attempt gave no answer, and what to deliver if it stays the last one."""

    kind: str  # empty | reasoning_only | invalid_call | schema | stall | connect | status
    detail: str
    retry_after: float | None = None
    status: int | None = None
    body: bytes = b""  # the upstream's error body (status)
    fallback: list[bytes] = field(default_factory=list)  # invalid calls as they came, ending included
    final: bool = False  # not worth retrying (a status that is not transient)


@dataclass
class Success:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # the upstream's raw body


@dataclass
class Attempt:
    number: int
    why: str
    delay: float = 0.0
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    status: int | None = None
    outcome: str = ""
    detail: str = ""
    body: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "why": self.why,
            "delay": round(self.delay, 3),
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "outcome": self.outcome,
            "detail": self.detail,
            "bytes": len(self.body),
            "body": self.body,
        }


class UpstreamClient:
    """One pooled httpx client, rebuilt when mitmproxy's upstream TLS options change."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._settings: tuple[Any, ...] | None = None

    def get(self) -> httpx.AsyncClient:
        opts = ctx.options
        settings = (
            bool(opts.ssl_insecure),
            opts.ssl_verify_upstream_trusted_ca,
            opts.ssl_verify_upstream_trusted_confdir,
        )
        if self._client is None or settings != self._settings:
            if self._client is not None:
                asyncio.get_running_loop().create_task(self._client.aclose())
            self._client = httpx.AsyncClient(
                verify=_verification(*settings), trust_env=False, timeout=None, follow_redirects=False
            )
            self._settings = settings
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _verification(insecure: bool, ca_file: str | None, ca_dir: str | None) -> ssl.SSLContext | bool:
    if insecure:
        return False
    return ssl.create_default_context(cafile=ca_file or certifi.where(), capath=ca_dir or None)


def client_gone(flow: http.HTTPFlow) -> bool:
    return not (flow.client_conn.state & ConnectionState.CAN_READ)


def retry_body(body: bytes, stream: bool) -> bytes:
    """The body as the proxy sent it the first time, or (kimi_retry_stream=false) non-streamed."""
    if stream:
        return body
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(request, dict):
        return body
    request["stream"] = False
    request.pop("stream_options", None)
    return orjson.dumps(request)


def retry_error_message(body: bytes, status: int) -> str:
    try:
        parsed = orjson.loads(body)
        message = parsed["error"]["message"] if isinstance(parsed.get("error"), dict) else parsed.get("error")
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        message = None
    text = message if isinstance(message, str) and message else body[:300].decode("utf-8", "replace")
    return f"the upstream answered HTTP {status}: {text}"


def final_events(failure: Failure, attempts: int) -> list[bytes]:
    """What a streaming client gets when attempts run out: never a silent empty success."""
    if failure.kind in DELIVERED_AS_CAME and failure.fallback:
        return failure.fallback
    if failure.kind in ("empty", "reasoning_only"):
        message = EMPTY_TURN_MESSAGE.format(detail=failure.detail, attempts=attempts)
        return [error_event(message, "upstream_empty_turn", "upstream_empty_turn"), DONE_EVENT]
    if failure.kind == "status":
        return [error_event(f"kimiwire: {failure.detail}", "upstream_error", failure.status), DONE_EVENT]
    error_type = "upstream_timeout" if failure.kind == "stall" else "upstream_error"
    return [
        error_event(f"kimiwire: {failure.detail} (after {attempts} attempts)", error_type, failure.kind),
        DONE_EVENT,
    ]


class Sink:
    """Where an attempt's repaired events go: live into the client's open body, or collected."""

    def __init__(self, flow: http.HTTPFlow, live: bool, delivered: bytearray | None = None) -> None:
        self.flow = flow
        self.live = live
        self.delivered = delivered if delivered is not None else bytearray()

    async def send(self, events: list[bytes]) -> None:
        data = [e for e in events if e]
        if not data:
            return
        if self.live:
            result = await proxy_internals.send_to_client(self.flow, data)
            if result.kind is proxy_internals.SendKind.GONE:
                raise ClientGone
            if result.kind is not proxy_internals.SendKind.SENT:
                raise RuntimeError(f"cannot write to the client: {result}")
        self.delivered += b"".join(data)


class Retrier:
    """The attempt loop for one proxy: one per addon, state per call."""

    def __init__(self, counts: Counter[str], rand: Callable[[], float] = random.random) -> None:
        self.client = UpstreamClient()
        self.counts = counts
        self.rand = rand
        self.policy = RetryPolicy()
        self.limits = EndingLimits()

    # -- the loop -----------------------------------------------------------------------------

    async def run(
        self,
        flow: http.HTTPFlow,
        record: dict[str, Any],
        failure: Failure,
        attempt: Callable[[Attempt], Awaitable[Failure | None]],
    ) -> tuple[Failure | None, int]:
        """Retry after the first attempt failed with `failure` until one answers (None) or
        attempts run out (the last failure). Returns it with the number of attempts made."""
        attempts = record.setdefault("attempts", [])
        made = len(attempts) or 1
        started = flow.request.timestamp_start
        while True:
            if failure.final:
                break
            decision = decide(self.policy, failure.kind, made, time.time() - started, self.rand(), failure.retry_after)
            if not decision.retry:
                record["retry_gave_up"] = decision.why_not
                break
            logger.info(
                "kimiwire: %s %s: attempt %d failed (%s: %s); retrying in %.2f s",
                flow.request.method,
                flow.request.path,
                made,
                failure.kind,
                failure.detail,
                decision.delay,
            )
            current = Attempt(made + 1, failure.kind, decision.delay)
            self.counts["retry.attempts"] += 1
            self.counts[f"retry.why.{failure.kind}"] += 1
            try:
                await self._unless_client_leaves(flow, asyncio.sleep(decision.delay))
                current.started = time.time()
                result = await self._unless_client_leaves(flow, attempt(current))
            except ClientGone:
                current.outcome = "cancelled"
                current.detail = "the client left"
                self.counts["retry.cancelled"] += 1
                logger.info("kimiwire: %s %s: retry cancelled, the client left", flow.request.method, flow.request.path)
                raise
            finally:
                current.seconds = time.time() - current.started
                attempts.append(current.as_dict())
            made += 1
            if result is None:
                current.outcome = "answered"
                attempts[-1] = current.as_dict()
                self.counts["retry.answered"] += 1
                logger.info("kimiwire: %s %s: attempt %d answered", flow.request.method, flow.request.path, made)
                return None, made
            current.outcome, current.detail = result.kind, result.detail
            attempts[-1] = current.as_dict()
            failure = result
        self.counts["retry.exhausted"] += 1
        logger.info(
            "kimiwire: %s %s: no answer after %d attempt(s) (%s: %s)",
            flow.request.method,
            flow.request.path,
            made,
            failure.kind,
            failure.detail,
        )
        return failure, made

    @staticmethod
    async def _unless_client_leaves(flow: http.HTTPFlow, work: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    return task.result()
                if client_gone(flow):
                    raise ClientGone
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # -- one attempt ------------------------------------------------------------------------------

    def _request(self, flow: http.HTTPFlow, stream: bool) -> httpx.Request:
        headers = [(k, v) for k, v in flow.request.headers.fields if k.lower() not in _HOP_BY_HOP]
        body = retry_body(flow.request.raw_content or b"", stream)
        return self.client.get().build_request(flow.request.method, flow.request.url, headers=headers, content=body)

    def _remaining(self, flow: http.HTTPFlow) -> float:
        return max(0.0, self.policy.budget - (time.time() - flow.request.timestamp_start))

    async def _send(
        self, flow: http.HTTPFlow, current: Attempt, stream: bool
    ) -> tuple[httpx.Response | None, Failure | None]:
        """Send the request; (response, None) once headers came, else (None, why not)."""
        limit = self._remaining(flow)
        if self.limits.first_byte_timeout > 0:
            limit = min(limit, self.limits.first_byte_timeout)
        try:
            response = await asyncio.wait_for(self.client.get().send(self._request(flow, stream), stream=True), limit)
        except TimeoutError:
            return None, Failure("stall", f"no response headers within {limit:.1f} s")
        except httpx.HTTPError as exc:
            return None, Failure("connect", f"{type(exc).__name__}: {exc}".rstrip(": "))
        current.status = response.status_code
        if response.status_code < 400:
            return response, None
        try:
            body = await asyncio.wait_for(self._read_bounded(response), max(1.0, self._remaining(flow)))
        except (TimeoutError, httpx.HTTPError):
            body = b""
        finally:
            await response.aclose()
        current.body = body
        failure = Failure(
            "status",
            retry_error_message(body, response.status_code),
            retry_after_seconds(response.headers.get("retry-after"), time.time()),
            response.status_code,
            body,
            final=response.status_code not in RETRY_STATUSES,
        )
        return None, failure

    @staticmethod
    async def _read_bounded(response: httpx.Response) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > _MAX_ERROR_BODY:
                break
        return bytes(body)

    async def stream_attempt(
        self,
        flow: http.HTTPFlow,
        current: Attempt,
        facts: RequestFacts,
        policy: Policy,
        continuation: Continuation,
        sink: Sink,
        success: list[Success],
    ) -> Failure | None:
        """One streamed attempt: its repaired events go to `sink` as they come, its ending held
        until the turn proves to have an answer."""
        response, failure = await self._send(flow, current, self.policy.stream)
        if response is None:
            return failure
        try:
            content_type = response.headers.get("content-type", "")
            if chat_exchanges.is_json(content_type):
                body = await self._read_bounded(response)
                current.body = body
                return await self._completion_as_stream(body, facts, policy, continuation, sink, response, success)
            repairer = StreamRepairer(facts, policy)
            checks = self.policy.turn_checks()
            gate = TurnGate(facts, checks, policy.tool_stream == "whole", policy.stream_buffer_limit)
            raw = bytearray()
            chunks = response.aiter_raw().__aiter__()
            while True:
                wait = self._read_wait(flow, first=not raw, proven=gate.proven)
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), wait)
                except StopAsyncIteration:
                    break
                except (TimeoutError, httpx.HTTPError) as exc:
                    why = "no event in time" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                    current.body = bytes(raw)
                    if not gate.proven and not gate.seen.calls and not upstream_started_calls(bytes(raw)):
                        return Failure("stall" if isinstance(exc, TimeoutError) else "connect", why)
                    tail = repairer.end_with_error(error_event(f"kimiwire: retry ended: {why}", "upstream_error", None))
                    await sink.send(continuation.rewrite(gate.open() + tail))
                    return None
                raw += chunk
                current.body = bytes(raw)
                await sink.send(continuation.rewrite(gate.feed(repairer.feed(chunk))))
            out = gate.feed(repairer.end())
            verdict = gate.verdict()
            if verdict is not None:
                return Failure(verdict.kind, verdict.detail, fallback=continuation.rewrite(gate.discard()))
            await sink.send(continuation.rewrite(out + gate.open()))
            success.append(Success(response.status_code, list(response.headers.raw), bytes(raw)))
            return None
        finally:
            await response.aclose()

    def _read_wait(self, flow: http.HTTPFlow, first: bool, proven: bool) -> float | None:
        limits = self.limits
        wait = limits.first_event_timeout if first and limits.first_byte_timeout > 0 else limits.idle_timeout
        if not proven:  # still a retry: the budget bounds it too
            budget = self._remaining(flow)
            wait = min(wait, budget) if wait else budget
        return wait or None

    async def _completion_as_stream(
        self,
        body: bytes,
        facts: RequestFacts,
        policy: Policy,
        continuation: Continuation,
        sink: Sink,
        response: httpx.Response,
        success: list[Success],
    ) -> Failure | None:
        """A non-streamed answer (kimi_retry_stream=false) delivered to a streaming client as SSE."""
        parsed, failure = self.judge_completion(body, facts, policy)
        if failure is not None:
            if parsed is not None and failure.kind in DELIVERED_AS_CAME:
                failure.fallback = continuation.rewrite(completion_events(parsed))
            return failure
        assert parsed is not None
        await sink.send(continuation.rewrite(completion_events(parsed)))
        success.append(Success(response.status_code, list(response.headers.raw), body))
        return None

    def judge_completion(
        self, body: bytes, facts: RequestFacts, policy: Policy
    ) -> tuple[dict[str, Any] | None, Failure | None]:
        """A non-streamed answer repaired and judged: (the repaired body, why it is no answer)."""
        repaired, _, why = repair_completion_body(body, facts, policy)
        if why:
            return None, None  # not something to judge: delivered as it came
        parsed = orjson.loads(repaired if repaired is not None else body)
        verdict = judge(completion_seen(parsed), facts, self.policy.turn_checks())
        if verdict is None:
            return parsed, None
        return parsed, Failure(verdict.kind, verdict.detail)

    async def completion_attempt(
        self, flow: http.HTTPFlow, current: Attempt, facts: RequestFacts, policy: Policy, success: list[Success]
    ) -> Failure | None:
        """One non-streamed attempt: the whole answer, judged."""
        response, failure = await self._send(flow, current, stream=True)
        if response is None:
            return failure
        try:
            body = await asyncio.wait_for(self._read_bounded_all(response), max(1.0, self._remaining(flow)))
        except (TimeoutError, httpx.HTTPError) as exc:
            return Failure("stall" if isinstance(exc, TimeoutError) else "connect", f"{type(exc).__name__}")
        finally:
            await response.aclose()
        current.body = body
        if chat_exchanges.is_json(response.headers.get("content-type", "")):
            _, failure = self.judge_completion(body, facts, policy)
            if failure is not None:
                if failure.kind == "forced_tool":  # still an answer: delivered when attempts run out
                    failure.body = body
                return failure
        success.append(Success(response.status_code, list(response.headers.raw), body))
        return None

    @staticmethod
    async def _read_bounded_all(response: httpx.Response) -> bytes:
        return b"".join([chunk async for chunk in response.aiter_raw()])
