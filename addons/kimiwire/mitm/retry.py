"""Retries upstream inside one flow, so a client never gets a silent empty turn while attempts
remain. The decisions are sans-IO (`wire/retry_policy.py`, `wire/response/turn_gate.py`,
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
- a retryable error status on a streamed request: decided at its headers (mitm/status_stream.py),
  which become a first-time success's (`200 OK`, event stream) while the error body is held; the
  retry then streams from the `response` hook as above.
- a non-streamed turn, or an error status on a non-streamed request: the `response` hook again,
  which replaces the response before mitmproxy sends it.
- a connection failure or stall before response headers (or a whole body that broke): the `error`
  hook. A streamed request's HTTP/1 client is sent a first-time success's head from there
  (`proxy_internals.send_raw_to_client`) and the retry's events as chunks; otherwise the answer
  goes out whole through the error-answer path of `proxy_internals`.
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
upstream request is closed); the mapping to that answer is `wire/retry_outcome.py`, one for
every path. Each attempt is recorded in `flow.metadata["kimiwire"]["attempts"]` (why, status,
timing, bytes, the raw upstream body, its repairs), counted and logged.
"""

from __future__ import annotations

import asyncio
import functools
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
from kimiwire.mitm.fallback import FALLBACK_KINDS, Target
from kimiwire.wire import chat_exchanges
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openai_errors import error_body, error_event
from kimiwire.wire.policy import Policy
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.continuation import Continuation, completion_events
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.turn_gate import (
    DELIVERED_AS_CAME,
    TurnGate,
    completion_seen,
    judge,
)
from kimiwire.wire.response.turn_pipeline import TurnPipeline
from kimiwire.wire.retry_outcome import EMPTY_TURN_MESSAGE, Failure, exhausted_events
from kimiwire.wire.retry_policy import (
    RETRY_STATUSES,
    RetryDecision,
    RetryPolicy,
    UpstreamError,
    decide,
    in_band_error,
    retry_after_seconds,
)
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT, EndingLimits

logger = logging.getLogger("kimiwire")

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"upgrade", b"proxy-connection"}
)
_MAX_ERROR_BODY = 1024 * 1024
__all__ = ["EMPTY_TURN_MESSAGE", "Failure", "exhausted_events"]  # (re-exported for the adapter)


class ClientGone(Exception):
    """The client left while a retry was under way."""


@dataclass
class Success:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # the upstream's raw body
    broken: str = ""  # the attempt answered, then its stream broke (a reset or a stall): why


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
    repairs: list[dict[str, Any]] = field(default_factory=list)  # what the attempt's repairer did
    target: Target | None = None  # not the flow's upstream: the fallback

    def as_dict(self) -> dict[str, Any]:
        where = {"upstream": self.target.name} if self.target is not None else {}
        return where | {
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
            "repairs": self.repairs,
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
    error = UpstreamError.parse(body)  # with a gateway's wrapped provider error (OpenRouter)
    message = error.text() if error is not None else None
    text = message if message else body[:300].decode("utf-8", "replace")
    return f"the upstream answered HTTP {status}: {text}"


final_events = exhausted_events  # what a streaming client gets when attempts run out


class Sink:
    """Where an attempt's repaired events go: live into the client's open body, or collected."""

    def __init__(self, flow: http.HTTPFlow, live: bool, delivered: bytearray | None = None, raw: bool = False) -> None:
        self.flow = flow
        self.live = live
        self.raw = raw  # live, written as chunks straight to a client that has our head (send_raw_to_client)
        self.delivered = delivered if delivered is not None else bytearray()
        self.last_sent = time.monotonic()
        self.comments = 0

    async def send(self, events: list[bytes]) -> None:
        data = [e for e in events if e]
        if not data:
            return
        if self.live:
            if self.raw:
                joined = b"".join(data)
                result = await proxy_internals.send_raw_to_client(self.flow, b"%x\r\n%s\r\n" % (len(joined), joined))
            else:
                result = await proxy_internals.send_to_client(self.flow, data)
            if result.kind is proxy_internals.SendKind.GONE:
                raise ClientGone
            if result.kind is not proxy_internals.SendKind.SENT:
                raise RuntimeError(f"cannot write to the client: {result}")
            self.last_sent = time.monotonic()
        self.delivered += b"".join(data)

    async def finish(self) -> None:
        """A raw sink's body ends (the chunked terminator)."""
        if self.raw:
            await proxy_internals.send_raw_to_client(self.flow, b"0\r\n\r\n")

    async def keep_alive(self, interval: float) -> None:
        """While attempts run, a comment whenever the client heard nothing for `interval` seconds
        (between whole events: every send is whole events). Runs until cancelled."""
        while True:
            await asyncio.sleep(max(0.0, self.last_sent + interval - time.monotonic()))
            if time.monotonic() - self.last_sent >= interval:
                try:
                    await self.send([KEEPALIVE_COMMENT])
                except (ClientGone, RuntimeError):
                    return  # the attempt notices the client left by itself
                self.comments += 1


class Retrier:
    """The attempt loop for one proxy: one per addon, state per call."""

    def __init__(self, counts: Counter[str], rand: Callable[[], float] = random.random) -> None:
        self.client = UpstreamClient()
        self.counts = counts
        self.rand = rand
        self.policy = RetryPolicy()
        self.limits = EndingLimits()
        # The fallback attempt for a flow whose primary attempts ran out (None: no fallback).
        self.fallback_for: Callable[[http.HTTPFlow], Target | None] = lambda flow: None

    # -- the loop -----------------------------------------------------------------------------

    async def run(
        self,
        flow: http.HTTPFlow,
        record: dict[str, Any],
        failure: Failure,
        attempt: Callable[[Attempt], Awaitable[Failure | None]],
        sink: Sink | None = None,
        adopted: tuple[Attempt, Awaitable[Failure | None]] | None = None,
    ) -> tuple[Failure | None, int]:
        """Retry after the first attempt failed with `failure` until one answers (None) or
        attempts run out (the last failure). Returns it with the number of attempts made. A live
        `sink` gets a comment whenever the client heard nothing for `limits.keepalive` seconds.
        `adopted`: an attempt already under way (a hedge), taken as the first retry."""
        keeping = None
        if sink is not None and sink.live and self.limits.keepalive > 0:
            keeping = asyncio.ensure_future(sink.keep_alive(self.limits.keepalive))
        try:
            return await self._run(flow, record, failure, attempt, adopted)
        finally:
            if keeping is not None:
                keeping.cancel()
                await asyncio.gather(keeping, return_exceptions=True)
                if sink is not None and sink.comments:
                    self.counts["retry.keepalive_comments"] += sink.comments

    async def _run(
        self,
        flow: http.HTTPFlow,
        record: dict[str, Any],
        failure: Failure,
        attempt: Callable[[Attempt], Awaitable[Failure | None]],
        adopted: tuple[Attempt, Awaitable[Failure | None]] | None = None,
    ) -> tuple[Failure | None, int]:
        attempts = record.setdefault("attempts", [])
        made = len(attempts) or 1
        started = flow.request.timestamp_start
        target: Target | None = None
        while True:
            if target is not None:
                break  # the fallback was the last attempt
            if adopted is not None:
                current, work = adopted
                current.number = made + 1
                adopted = None
                try:
                    result = await self._unless_client_leaves(flow, work)
                finally:
                    current.seconds = time.time() - current.started
                    attempts.append(current.as_dict())
                made += 1
                if result is None:
                    self._answered(flow, record, current, attempts, made)
                    return None, made
                current.outcome, current.detail = result.kind, result.detail
                attempts[-1] = current.as_dict()
                failure = result
                continue
            decision = RetryDecision(False)
            if not failure.final:
                elapsed = time.time() - started
                decision = decide(self.policy, failure.kind, made, elapsed, self.rand(), failure.retry_after)
                if not decision.retry:
                    record["retry_gave_up"] = decision.why_not
            if not decision.retry:
                target = self._fallback(flow, failure, record)
                if target is None:
                    break
                decision = RetryDecision(True)
            logger.info(
                "kimiwire: %s %s: attempt %d failed (%s: %s); retrying in %.2f s",
                flow.request.method,
                flow.request.path,
                made,
                failure.kind,
                failure.detail,
                decision.delay,
            )
            current = Attempt(made + 1, failure.kind, decision.delay, target=target)
            self.counts["retry.attempts"] += 1
            self.counts[f"retry.why.{failure.kind}"] += 1
            if target is not None:
                self.counts["retry.fallback"] += 1
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
                self._answered(flow, record, current, attempts, made)
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

    def _answered(
        self, flow: http.HTTPFlow, record: dict[str, Any], current: Attempt, attempts: list[Any], made: int
    ) -> None:
        current.outcome = "answered"
        attempts[-1] = current.as_dict()
        # The answer's repairs are the flow's (counted); a failed attempt's stay on it.
        for entry in current.repairs:
            record.setdefault("repairs", []).append({**entry, "phase": "response", "attempt": made})
            self.counts[entry["kind"]] += 1
        self.counts["retry.answered"] += 1
        logger.info("kimiwire: %s %s: attempt %d answered", flow.request.method, flow.request.path, made)

    def _fallback(self, flow: http.HTTPFlow, failure: Failure, record: dict[str, Any]) -> Target | None:
        """One attempt on the fallback upstream when the primary failed by itself (connect, status,
        stall) and not with a status the client caused (a final 4xx)."""
        if failure.kind not in FALLBACK_KINDS or (failure.final and (failure.status or 0) < 500):
            return None
        target = self.fallback_for(flow)
        if target is None:
            return None
        record["fallback"] = target.name
        logger.info(
            "kimiwire: %s %s: the upstream failed (%s: %s); one attempt on the fallback %s",
            flow.request.method,
            flow.request.path,
            failure.kind,
            failure.detail,
            target.name,
        )
        return target

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

    def _request(self, flow: http.HTTPFlow, stream: bool, target: Target | None = None) -> httpx.Request:
        if target is not None:
            body = retry_body(target.body, stream)
            method, url = flow.request.method, target.url
            return self.client.get().build_request(method, url, headers=target.headers, content=body)
        headers = [(k, v) for k, v in flow.request.headers.fields if k.lower() not in _HOP_BY_HOP]
        body = retry_body(flow.request.raw_content or b"", stream)
        return self.client.get().build_request(flow.request.method, flow.request.url, headers=headers, content=body)

    def _remaining(self, flow: http.HTTPFlow, current: Attempt | None = None) -> float:
        if current is not None and current.target is not None:  # the fallback has its own budget
            return max(0.0, current.target.deadline - time.time())
        return max(0.0, self.policy.budget - (time.time() - flow.request.timestamp_start))

    async def _send(
        self, flow: http.HTTPFlow, current: Attempt, stream: bool
    ) -> tuple[httpx.Response | None, Failure | None]:
        """Send the request; (response, None) once headers came, else (None, why not)."""
        limit = self._remaining(flow, current)
        if self.limits.first_byte_timeout > 0:
            limit = min(limit, self.limits.first_byte_timeout)
        request = self._request(flow, stream, current.target)
        try:
            response = await asyncio.wait_for(self.client.get().send(request, stream=True), limit)
        except TimeoutError:
            return None, Failure("stall", f"no response headers within {limit:.1f} s")
        except httpx.HTTPError as exc:
            return None, Failure("connect", f"{type(exc).__name__}: {exc}".rstrip(": "))
        current.status = response.status_code
        if response.status_code < 400:
            return response, None
        try:
            body = await asyncio.wait_for(self._read_bounded(response), max(1.0, self._remaining(flow, current)))
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
        if current.target is not None:  # the fallback's answer is repaired by its own policy
            facts, policy = current.target.facts, current.target.policy
        response, failure = await self._send(flow, current, self.policy.stream)
        if response is None:
            return failure
        repairer: StreamRepairer | None = None
        try:
            content_type = response.headers.get("content-type", "")
            if chat_exchanges.is_json(content_type):
                body = await self._read_bounded(response)
                current.body = body
                return await self._completion_as_stream(body, facts, policy, continuation, sink, response, success)
            repairer = StreamRepairer(facts, policy)
            checks = self.policy.turn_checks()
            gate = TurnGate(facts, checks, policy.tool_stream == "whole", policy.stream_buffer_limit)
            pipeline = TurnPipeline(repairer, gate, continuation)
            raw = bytearray()
            chunks = response.aiter_raw().__aiter__()
            while True:
                wait = self._read_wait(flow, current, first=not raw, proven=pipeline.proven)
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), wait)
                except StopAsyncIteration:
                    break
                except (TimeoutError, httpx.HTTPError) as exc:
                    why = "no event in time" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                    current.body = bytes(raw)
                    if pipeline.stalled_unanswered(functools.partial(bytes, raw)):
                        return Failure("stall" if isinstance(exc, TimeoutError) else "connect", why)
                    ended = error_event(f"kimiwire: retry ended: {why}", "upstream_error", None)
                    await sink.send(pipeline.end_with_error(ended))
                    # It answered (content or a call reached the client's copy), then broke: the
                    # client gets that and the error, as after a first attempt that broke.
                    success.append(Success(response.status_code, list(response.headers.raw), bytes(raw), why))
                    return None
                raw += chunk
                current.body = bytes(raw)
                await sink.send(pipeline.feed(chunk))
            out = pipeline.end()
            if (verdict := pipeline.verdict) is not None:
                return Failure(verdict.kind, verdict.detail, fallback=pipeline.discard())
            await sink.send(out)
            success.append(Success(response.status_code, list(response.headers.raw), bytes(raw)))
            return None
        finally:
            if repairer is not None:
                current.repairs = repairer.log.as_list()
            await response.aclose()

    def _read_wait(self, flow: http.HTTPFlow, current: Attempt, first: bool, proven: bool) -> float | None:
        """How long to wait for the next upstream read: the first event counts from the attempt's
        start (its time to first token), later ones from the one before."""
        limits = self.limits
        if first and limits.first_event_timeout > 0:
            wait = max(0.001, limits.first_event_timeout - (time.time() - current.started))
        else:
            wait = limits.idle_timeout
        if not proven:  # still a retry: the budget bounds it too
            budget = self._remaining(flow, current)
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
        if parsed is None:  # not a chat completion that can be turned into events
            return Failure("connect", "the upstream's JSON answer could not be read as a chat completion")
        await sink.send(continuation.rewrite(completion_events(parsed)))
        success.append(Success(response.status_code, list(response.headers.raw), body))
        return None

    def judge_completion(
        self, body: bytes, facts: RequestFacts, policy: Policy
    ) -> tuple[dict[str, Any] | None, Failure | None]:
        """A non-streamed answer repaired and judged: (the repaired body, why it is no answer)."""
        error = in_band_error(body)  # OpenRouter: an error met after the model began, in a 200
        if error is not None and error.retryable and self.policy.watches("status"):
            detail = f"the upstream answered HTTP 200 with error {error.code}: {error.text()}"
            # as an OpenAI-style error: the client gets it with its status when attempts run out
            answer = error_body(f"kimiwire: {detail}", "upstream_error", error.code)
            return None, Failure("status", detail, None, error.code, answer)
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
        if current.target is not None:
            facts, policy = current.target.facts, current.target.policy
        response, failure = await self._send(flow, current, stream=True)
        if response is None:
            return failure
        wait = self._remaining(flow, current)
        if self.limits.idle_timeout > 0:  # a whole body comes right after its headers, or it stalled
            wait = min(wait, self.limits.idle_timeout)
        try:
            body = await asyncio.wait_for(self._read_bounded_all(response), max(0.001, wait))
        except (TimeoutError, httpx.HTTPError) as exc:
            return Failure("stall" if isinstance(exc, TimeoutError) else "connect", f"{type(exc).__name__}")
        finally:
            await response.aclose()
        current.body = body
        if chat_exchanges.is_json(response.headers.get("content-type", "")):
            _, failure = self.judge_completion(body, facts, policy)
            if failure is not None:
                if not failure.body:  # (an in-band error brings its own OpenAI-style body)
                    failure.body = body  # invalid calls go out as they came when attempts run out
                return failure
        success.append(Success(response.status_code, list(response.headers.raw), body))
        return None

    @staticmethod
    async def _read_bounded_all(response: httpx.Response) -> bytes:
        return b"".join([chunk async for chunk in response.aiter_raw()])
