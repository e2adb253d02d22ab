"""The mitmproxy side of retries, in one room: which finished response or failure is retried, the
attempts run (mitm/retry.py) live into the client's open body or buffered before it is answered,
and the retry's outcome recorded once on the flow (`_record_outcome`). What the client gets when
attempts run out is decided in wire/retry/outcome.py only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from kimiwire.mitm import proxy_internals
from kimiwire.mitm.flow_endings import FlowEnding
from kimiwire.mitm.flow_state import FlowState
from kimiwire.mitm.hedge import HedgeRace
from kimiwire.mitm.response_side import buffered
from kimiwire.mitm.retry import (
    Attempt,
    ClientGone,
    Failure,
    Sink,
    Success,
    client_gone,
    exhausted_events,
    retry_error_message,
)
from kimiwire.mitm.status_stream import HeldError, hold_for_retry, will_retry
from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.wire import chat_exchanges
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.token_limit import clamp_max_tokens
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.retry.continuation import Continuation
from kimiwire.wire.retry.failure_kinds import FailureKind
from kimiwire.wire.retry.outcome import as_it_came, exhausted_answer, retry_failed_events
from kimiwire.wire.retry.policy import RETRY_STATUSES, decide, lasting_connect_failure, retry_after_seconds
from kimiwire.wire.servers.policy import Policy

if TYPE_CHECKING:
    from kimiwire.mitm.addon import KimiWire

logger = logging.getLogger("kimiwire")


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """How a flow's retry ended: what `_record_outcome` writes once as the flow's ending."""

    ending: str  # a FlowEnding, retries_exhausted with the last failure's kind

    @classmethod
    def after(cls, last: Failure | None) -> RetryOutcome:
        """An attempt answered (no last failure), or attempts ran out with `last`."""
        if last is None:
            return ANSWERED
        return cls(FlowEnding.RETRIES_EXHAUSTED.detailed(last.kind))


ANSWERED = RetryOutcome(FlowEnding.RETRIED)
CLIENT_LEFT = RetryOutcome(FlowEnding.CLIENT_DISCONNECTED)
RETRY_FAILED = RetryOutcome(FlowEnding.RETRIES_EXHAUSTED.detailed("error"))  # an exception cost the retry


class RetryHooks:
    """Retries as the response and error hooks start them (`KimiWire.retries`)."""

    def __init__(self, kw: KimiWire) -> None:
        self.kw = kw

    def for_response(self, flow: http.HTTPFlow) -> Any:
        """The retry a finished response needs (a coroutine that records its outcome), or None."""
        return self._recorded(flow, self._response_retry(flow))

    def for_error(self, flow: http.HTTPFlow) -> Any:
        """The retry a failure before response headers needs (a coroutine that records its outcome), or None."""
        return self._recorded(flow, self._error_retry(flow))

    def _recorded(self, flow: http.HTTPFlow, retry: Coroutine[Any, Any, RetryOutcome] | None) -> Any:
        return None if retry is None else self._record_outcome(self.kw.flows.of(flow), retry)

    async def _record_outcome(self, state: FlowState, retry: Coroutine[Any, Any, RetryOutcome]) -> None:
        """The retry's outcome, recorded once: how the flow ended, in place of an attempt's timeout
        (kimi.stats counts the flow's last ending once, when it is over); the flow is marked and
        commented with its retries (flow_notes.retry_words: `retried=N why=...`)."""
        outcome = await retry
        state.record.replace_ending(outcome.ending)
        self.kw.recorder.describe(state)

    def _response_retry(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, RetryOutcome] | None:
        state = self.kw.flows.get(flow)
        if state is None:
            return None
        stream = state.stream  # (only a flow with a repairs context gets one)
        if stream is not None:
            return self._retry_stream(state, stream) if stream.failed_turn is not None else None
        if state.held_error is not None:
            return self._retry_status_stream(state, state.held_error)
        if state.early_head_sent:
            return None  # a late answer went out in the early head's stream (LateAnswer)
        context = state.repairs_context
        if context is None:
            return None
        response = flow.response
        assert response is not None
        policy = self.kw.retrier.policy
        if not policy.active:
            return None
        facts, wire_policy = context
        status = response.status_code
        failure: Failure | None
        if status == 400 and policy.watches("status") and policy.retries > 0:
            return self._retry_clamped(state, facts, wire_policy)
        if status in RETRY_STATUSES and policy.watches("status"):
            raw = response.raw_content or b""
            failure = Failure(
                "status",
                retry_error_message(raw, status),
                retry_after_seconds(response.headers.get("retry-after"), time.time()),
                status,
                raw,
            )
        elif status == 200 and not facts.stream and chat_exchanges.is_json(response.headers.get("content-type", "")):
            _, failure = self.kw.retrier.judge_completion(response.get_content(strict=False) or b"", facts, wire_policy)
            if failure is None:
                return None
            failure.body = response.raw_content or b""
        else:
            return None
        return self._retry_buffered(state, facts, wire_policy, failure)

    def _retry_clamped(
        self, state: FlowState, facts: RequestFacts, wire_policy: Policy
    ) -> Coroutine[Any, Any, RetryOutcome] | None:
        """A 400 stating that `max_tokens` leaves no room for the prompt: sent once more with it
        lowered to the room stated (a second refusal reaches the client as it came), or None."""
        flow = state.flow
        response = flow.response
        assert response is not None
        raw = response.raw_content or b""
        clamped = clamp_max_tokens(raw, flow.request.content or b"")
        if clamped is None:
            return None
        flow.request.content = clamped.body
        state.record.set_upstream_request(clamped.body)
        log = RepairLog()
        log.add("request.max_tokens_clamped", None, {clamped.field: clamped.before}, {clamped.field: clamped.after})
        self.kw.recorder.repairs(flow, "request", log)
        self.kw.recorder.note(
            flow, f"the upstream stated its limit ({clamped.stated}): sent again with {clamped.field} {clamped.after}"
        )
        failure = Failure("status", retry_error_message(raw, 400), None, 400, raw, final=False)
        return self._retry_buffered(state, facts, wire_policy, failure)

    def _first_attempt(self, state: FlowState, failure: Failure, status: int | None, body: bytes) -> None:
        first = Attempt(1, "first", started=state.flow.request.timestamp_start, status=status)
        first.seconds = time.time() - first.started
        first.outcome, first.detail, first.body = failure.kind, failure.detail, body
        state.record.first_attempt(first.as_dict())
        self.kw.counts[f"retry.failed.{failure.kind}"] += 1

    async def _retry_stream(self, state: FlowState, stream: RepairingStream) -> RetryOutcome:
        """The first attempt's streamed turn gave no answer: retry into the client's open body."""
        flow = state.flow
        gate, verdict = stream.gate, stream.failed_turn
        assert state.repairs_context is not None and gate is not None and verdict is not None
        failure = Failure(verdict.kind, verdict.detail, fallback=gate.discard())
        self._first_attempt(
            state, failure, flow.response.status_code if flow.response else None, stream.upstream_bytes()
        )
        continuation = Continuation(gate.template, gate.role_delivered, gate.seen.reasoning_chars > 0)
        sink = Sink(flow, live=True, delivered=stream.delivered)
        _, success, outcome = await self._live_attempts(state, failure, sink, continuation, state.hedge)
        if success:  # the capture's response body: what the answering attempt sent
            stream.upstream = bytearray(success[-1].body)
        return outcome

    async def _retry_status_stream(self, state: FlowState, held: HeldError) -> RetryOutcome:
        """The first attempt's error status was held (the client has 200 headers): the retry
        streams into the client's open body as it comes."""
        raw = bytes(held.body)
        failure = Failure("status", retry_error_message(raw, held.status), held.retry_after, held.status, raw)
        self._first_attempt(state, failure, held.status, raw)
        success, outcome = await self._retry_live(state, failure, Sink(state.flow, live=True))
        # The record: the answering (or last) attempt's status, headers and raw body.
        answer = success[-1] if success else None
        state.upstream_body = answer.body if answer else raw
        state.upstream_headers = answer.headers if answer else held.headers
        return outcome

    async def _live_attempts(
        self,
        state: FlowState,
        failure: Failure,
        sink: Sink,
        continuation: Continuation,
        race: HedgeRace | None,
    ) -> tuple[Sink, list[Success], RetryOutcome]:
        """The retry's attempts, each one's events into the client's open body as they come (a hedge
        under way taken as the first), the answer ended explicitly when they run out. Never raises;
        returns the sink the events went to, the answering attempt's Success (none when none
        answered) and the retry's outcome."""
        flow = state.flow
        context = state.repairs_context
        assert context is not None
        facts, wire_policy = context
        success: list[Success] = []
        adopted = race.adopt() if race is not None else None
        if race is not None and adopted is not None:
            await race.sink.go_live(sink.raw, sink.delivered)
            sink, continuation, success = race.sink, race.continuation, race.success
        try:
            last, made = await self.kw.retrier.run(
                flow,
                state.record,
                failure,
                lambda current: self.kw.retrier.stream_attempt(
                    flow, current, facts, wire_policy, continuation, sink, success
                ),
                sink,
                adopted,
            )
            if last is None and not success:  # (never expected: an answer always leaves its Success)
                last = Failure("connect", "the answering attempt left no answer")
            if last is not None:
                await sink.send(exhausted_events(last, made))
            outcome = RetryOutcome.after(last)
        except ClientGone:
            outcome = CLIENT_LEFT
        except Exception as exc:
            self.kw.recorder.error(flow, "retry", exc)
            outcome = RETRY_FAILED
            with contextlib.suppress(Exception):
                await sink.send(retry_failed_events())
        return sink, success, outcome

    async def _retry_live(
        self, state: FlowState, failure: Failure, sink: Sink, race: HedgeRace | None = None
    ) -> tuple[list[Success], RetryOutcome]:
        """Attempts after `failure` whose events go to the client as they come (`sink`), as after
        a first-time success; the client's answer ends with the failure made explicit when they
        run out. Never raises; returns the answering attempt's Success (none when none answered)
        and the retry's outcome."""
        continuation = Continuation({}, False)
        sink, success, outcome = await self._live_attempts(state, failure, sink, continuation, race or state.hedge)
        with contextlib.suppress(Exception):
            await sink.finish()
        state.record.set_delivered(bytes(sink.delivered))
        return success, outcome

    async def _retry_buffered(
        self, state: FlowState, facts: RequestFacts, wire_policy: Policy, failure: Failure
    ) -> RetryOutcome:
        """Nothing has reached the client yet (a non-streamed turn, or an error status): retry and
        replace the response before mitmproxy sends it."""
        response = state.flow.response
        assert response is not None
        self._first_attempt(state, failure, response.status_code, response.raw_content or b"")
        success: list[Success] = []
        sink = Sink(state.flow, live=False)
        last, made, outcome = await self._attempts_settled(state, facts, wire_policy, failure, sink, success)
        if outcome is CLIENT_LEFT:
            return outcome
        if last is None:
            answer = success[-1]
            state.upstream_body = answer.body
            if facts.stream:
                headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-type"]
                _replace(response, 200, [*headers, (b"content-type", b"text/event-stream")], bytes(sink.delivered))
            else:
                _replace(response, answer.status, answer.headers, answer.body)
            return outcome
        if as_it_came(last, failure):
            return outcome
        exhausted = exhausted_answer(last, made, facts.stream, bytes(sink.delivered), "the upstream")
        _replace(response, exhausted.status, [(b"content-type", exhausted.content_type.encode())], exhausted.body)
        return outcome

    async def _attempts_settled(
        self,
        state: FlowState,
        facts: RequestFacts,
        wire_policy: Policy,
        failure: Failure,
        sink: Sink,
        success: list[Success],
    ) -> tuple[Failure | None, int, RetryOutcome]:
        """The attempts of a buffered retry; (None, attempts, outcome) when one answered (its Success
        last in `success`), else the failure the client is told about. A client that leaves, or an
        exception in the retry, ends the attempts as a failure: never an exception to the hook."""
        try:
            last, made = await self._buffered_attempts(state, facts, wire_policy, failure, sink, success)
        except ClientGone:
            return failure, state.record.attempts_made, CLIENT_LEFT
        except Exception as exc:
            self.kw.recorder.error(state.flow, "retry", exc)
            last, made = Failure("connect", f"the retry failed: {type(exc).__name__}"), state.record.attempts_made
        if last is None and not success:  # (never expected: an answer always leaves its Success)
            last = Failure("connect", "the answering attempt left no answer")
        return last, made, RetryOutcome.after(last)

    def _buffered_attempts(
        self,
        state: FlowState,
        facts: RequestFacts,
        wire_policy: Policy,
        failure: Failure,
        sink: Sink,
        success: list[Success],
    ) -> Any:
        flow = state.flow
        if facts.stream:
            continuation = Continuation({}, False)
            return self.kw.retrier.run(
                flow,
                state.record,
                failure,
                lambda current: self.kw.retrier.stream_attempt(
                    flow, current, facts, wire_policy, continuation, sink, success
                ),
            )
        return self.kw.retrier.run(
            flow,
            state.record,
            failure,
            lambda current: self.kw.retrier.completion_attempt(flow, current, facts, wire_policy, success),
        )

    def _error_retry(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, RetryOutcome] | None:
        """A failure before response headers (refused, reset, TLS, DNS, first-byte timeout) is
        retried when the answer can reach the client (kimi_json_errors' answer path)."""
        message = flow.error.msg if flow.error else ""
        state = self.kw.flows.get(flow)
        context = state.repairs_context if state is not None else None
        if state is None or context is None or "client disconnect" in message.lower():
            return None
        if flow.response is not None and (state.stream is not None or not buffered(flow.response)):
            return None  # a streamed response under way ends by its own path
        timed_out = state.record.ended(FlowEnding.FIRST_BYTE_TIMEOUT, FlowEnding.IDLE_TIMEOUT)
        kind: FailureKind = "stall" if timed_out else "connect"
        if state.hedge is not None and state.hedge.won:
            kind = "stall"  # the hedge answered first: the first attempt was closed for it
        if not self.kw.retrier.policy.watches(kind) or not self.kw.json_errors:
            return None
        if kind == "connect" and lasting_connect_failure(message):
            return None  # answered at once (502 naming the cause): another attempt would fail the same way
        if not proxy_internals.install_error_answers() or client_gone(flow):
            return None
        return self._retry_before_headers(state, *context, Failure(kind, message or "no response"))

    async def _retry_before_headers(
        self, state: FlowState, facts: RequestFacts, wire_policy: Policy, failure: Failure
    ) -> RetryOutcome:
        flow = state.flow
        race, state.hedge = state.hedge, None  # (kept for the retry that adopts it)
        state.release()  # the first-byte watch must not answer while the retry runs
        response = flow.response  # (headers came when a whole body broke)
        self._first_attempt(state, failure, response.status_code if response else None, b"")
        if facts.stream and response is None and await self._stream_head_sent(state, failure):
            answered, outcome = await self._retry_live(state, failure, Sink(flow, live=True, raw=True), race)
            if answered:
                state.upstream_body = answered[-1].body
                state.upstream_headers = answered[-1].headers
            return outcome
        if race is not None:
            race.cancel("the retry is answered whole")
        success: list[Success] = []
        sink = Sink(state.flow, live=False)
        last, made, outcome = await self._attempts_settled(state, facts, wire_policy, failure, sink, success)
        record = state.record
        if outcome is CLIENT_LEFT:
            return outcome
        if last is None:
            answer = success[-1]
            if facts.stream:
                body, content_type = bytes(sink.delivered), "text/event-stream"
            else:
                repaired, log, _ = repair_completion_body(answer.body, facts, wire_policy)
                body, content_type = repaired or answer.body, "application/json"
                self.kw.recorder.repairs(state.flow, "response", log)
            proxy_internals.set_error_answer(
                state.flow, proxy_internals.ErrorAnswer(answer.status, body, b"", content_type)
            )
            record.set_error_answer(answer.status)
            record.set_delivered(body)
            state.upstream_body = answer.body
            return outcome
        # As after a buffered retry: a streamed request's client gets an event stream (the calls the
        # last attempt made, or an error event); a connection failure or a stall its 502 or 504.
        exhausted = exhausted_answer(last, made, facts.stream, bytes(sink.delivered), self.kw.upstream_name(flow))
        proxy_internals.set_error_answer(
            state.flow, proxy_internals.ErrorAnswer(exhausted.status, exhausted.body, b"", exhausted.content_type)
        )
        record.set_error_answer(exhausted.status)
        return outcome

    async def _stream_head_sent(self, state: FlowState, failure: Failure) -> bool:
        """A streamed request that failed before response headers and will be retried: an HTTP/1
        client gets a first-time success's head now, so the retry streams to it as it comes."""
        flow = state.flow
        elapsed = time.time() - flow.request.timestamp_start
        if not proxy_internals.can_answer(flow):
            return False
        if state.early_head_sent:  # the client has its head: the retry, or its failure, streams into it
            proxy_internals.set_error_answer(flow, proxy_internals.ErrorAnswer(200, b"", b"", raw_sent=True))
            return True
        if not decide(self.kw.retrier.policy, failure.kind, 1, elapsed, 0.0, failure.retry_after).retry:
            return False
        sent = await proxy_internals.send_early_head(flow)  # (the same head an early head is)
        if sent.kind is not proxy_internals.SendKind.SENT:
            return False
        # mitmproxy's protocol error for this flow now only closes the connection (after our end).
        proxy_internals.set_error_answer(flow, proxy_internals.ErrorAnswer(200, b"", b"", raw_sent=True))
        state.record.set_error_answer(200)
        return True

    def hold_status(self, state: FlowState) -> bool:
        """A streamed request's first attempt answered a retryable status that will be retried:
        the client gets a first-time success's headers now, the retry streams (status_stream.py)."""
        flow, response = state.flow, state.flow.response
        assert response is not None
        policy = self.kw.retrier.policy
        if response.status_code not in RETRY_STATUSES:
            return False  # (most answers: no header or clock read for them)
        if not policy.watches("status") or not proxy_internals.usable():
            return False
        now = time.time()
        retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
        if not will_retry(policy, response.status_code, now - flow.request.timestamp_start, retry_after):
            return False
        state.held_error = hold_for_retry(response, flow.request.data.http_version, retry_after)
        return True


def _reason(status: int) -> str:
    """The status's reason phrase as RFC 9110 names it (what uvicorn-based servers send)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _replace(response: http.Response, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Make `response` (not yet sent) the given one; framing headers are mitmproxy's business, and
    the reason phrase is the status's own (never the replaced response's)."""
    response.status_code = status
    response.reason = _reason(status)
    response.headers = http.Headers(
        [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding", b"content-encoding")]
    )
    response.content = body
