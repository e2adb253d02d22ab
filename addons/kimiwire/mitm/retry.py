"""Retries upstream inside one flow, so a client never gets a silent empty turn while attempts
remain. The decisions are sans-IO (`wire/retry/policy.py`, `wire/retry/turn_gate.py`,
`wire/retry/continuation.py`); this module makes the extra attempts and delivers their answer.

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
upstream request is closed); the mapping to that answer is `wire/retry/outcome.py`, one for
every path. Each attempt is recorded in `flow.metadata["kimiwire"]["attempts"]` (why, status,
timing, bytes, the raw upstream body, its repairs), counted and logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from mitmproxy import http

from kimiwire.mitm.fallback import FALLBACK_KINDS, Target
from kimiwire.mitm.flow_record import FlowRecord
from kimiwire.mitm.retry_attempt import (
    Attempt,
    ClientGone,
    Sink,
    Success,
    UpstreamClient,
    client_gone,
    read_all,
    read_bounded,
    retry_error_message,
    sent_again,
    unless_client_leaves,
)
from kimiwire.wire import chat_exchanges
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openai_errors import error_body, error_event
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.turn_pipeline import TurnPipeline
from kimiwire.wire.retry.continuation import Continuation, completion_events
from kimiwire.wire.retry.failure_kinds import DELIVERED_AS_CAME
from kimiwire.wire.retry.outcome import EMPTY_TURN_MESSAGE, Failure, exhausted_events
from kimiwire.wire.retry.policy import (
    RETRY_STATUSES,
    RetryDecision,
    RetryPolicy,
    decide,
    in_band_error,
    retry_after_seconds,
)
from kimiwire.wire.retry.turn_gate import (
    TurnGate,
    completion_seen,
    judge,
)
from kimiwire.wire.servers.policy import Policy
from kimiwire.wire.stream_endings import EndingLimits

logger = logging.getLogger("kimiwire")

# (re-exported: the adapter and the hedge import the attempt's parts from here)
__all__ = [
    "EMPTY_TURN_MESSAGE",
    "Attempt",
    "ClientGone",
    "Failure",
    "Sink",
    "Success",
    "UpstreamClient",
    "client_gone",
    "exhausted_events",
    "retry_error_message",
]

final_events = exhausted_events  # what a streaming client gets when attempts run out


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
        record: FlowRecord,
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
        record: FlowRecord,
        failure: Failure,
        attempt: Callable[[Attempt], Awaitable[Failure | None]],
        adopted: tuple[Attempt, Awaitable[Failure | None]] | None = None,
    ) -> tuple[Failure | None, int]:
        attempts = record.attempts()
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
            else:
                decision = RetryDecision(False)
                if not failure.final:
                    elapsed = time.time() - started
                    decision = decide(self.policy, failure.kind, made, elapsed, self.rand(), failure.retry_after)
                    if not decision.retry:
                        record.retry_gave_up(decision.why_not)
                if not decision.retry:
                    target = self._fallback(flow, failure, record)
                    if target is None:
                        break
                    decision = RetryDecision(True)
                current = self._next_attempt(flow, failure, made, decision.delay, target)
                work = self._after_delay(current, attempt)
            made += 1
            result = await self._settle_attempt(flow, record, attempts, current, work)
            if result is None:
                return None, made
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

    def _next_attempt(
        self, flow: http.HTTPFlow, failure: Failure, made: int, delay: float, target: Target | None
    ) -> Attempt:
        """The attempt after `made` failed ones, counted and logged."""
        logger.info(
            "kimiwire: %s %s: attempt %d failed (%s: %s); retrying in %.2f s",
            flow.request.method,
            flow.request.path,
            made,
            failure.kind,
            failure.detail,
            delay,
        )
        self.counts["retry.attempts"] += 1
        self.counts[f"retry.why.{failure.kind}"] += 1
        if target is not None:
            self.counts["retry.fallback"] += 1
        return Attempt(made + 1, failure.kind, delay, target=target)

    @staticmethod
    async def _after_delay(current: Attempt, attempt: Callable[[Attempt], Awaitable[Failure | None]]) -> Failure | None:
        """The attempt, after its backoff (its time counts from its start, not from the wait)."""
        await asyncio.sleep(current.delay)
        current.started = time.time()
        return await attempt(current)

    async def _settle_attempt(
        self,
        flow: http.HTTPFlow,
        record: FlowRecord,
        attempts: list[Any],
        current: Attempt,
        work: Awaitable[Failure | None],
    ) -> Failure | None:
        """Await one attempt (a new one, or a hedge under way adopted) and record how it went:
        None when it answered, else its failure. A client that leaves cancels it (ClientGone)."""
        try:
            result: Failure | None = await unless_client_leaves(flow, work)
        except ClientGone:
            current.outcome = "cancelled"
            current.detail = "the client left"
            self.counts["retry.cancelled"] += 1
            logger.info("kimiwire: %s %s: retry cancelled, the client left", flow.request.method, flow.request.path)
            raise
        finally:
            current.seconds = time.time() - current.started
            attempts.append(current.as_dict())
        if result is None:
            self._answered(flow, record, current, attempts, current.number)
            return None
        current.outcome, current.detail = result.kind, result.detail
        attempts[-1] = current.as_dict()
        return result

    def _answered(
        self, flow: http.HTTPFlow, record: FlowRecord, current: Attempt, attempts: list[Any], made: int
    ) -> None:
        current.outcome = "answered"
        attempts[-1] = current.as_dict()
        # The answer's repairs are the flow's (counted); a failed attempt's stay on it.
        record.add_answer_repairs(current.repairs, made)
        self.counts.update(entry["kind"] for entry in current.repairs)
        self.counts["retry.answered"] += 1
        logger.info("kimiwire: %s %s: attempt %d answered", flow.request.method, flow.request.path, made)

    def _fallback(self, flow: http.HTTPFlow, failure: Failure, record: FlowRecord) -> Target | None:
        """One attempt on the fallback upstream when the primary failed by itself (connect, status,
        stall) and not with a status the client caused (a final 4xx)."""
        if failure.kind not in FALLBACK_KINDS or (failure.final and (failure.status or 0) < 500):
            return None
        target = self.fallback_for(flow)
        if target is None:
            return None
        record.set_fallback(target.name)
        logger.info(
            "kimiwire: %s %s: the upstream failed (%s: %s); one attempt on the fallback %s",
            flow.request.method,
            flow.request.path,
            failure.kind,
            failure.detail,
            target.name,
        )
        return target

    # -- one attempt ------------------------------------------------------------------------------

    def _request(self, flow: http.HTTPFlow, stream: bool, target: Target | None = None) -> httpx.Request:
        return sent_again(self.client.get(), flow, stream, target)

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
            body = await asyncio.wait_for(read_bounded(response), max(1.0, self._remaining(flow, current)))
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
                body = await read_bounded(response)
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
            body = await asyncio.wait_for(read_all(response), max(0.001, wait))
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
