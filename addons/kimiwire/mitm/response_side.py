"""The response side of a chat flow: the repairing stream set up at the response headers (with its
watchdog and keepalive comments), a stream ended by the proxy, a whole body's timeout and repair,
and what the client gets when the upstream fails (the error hook's answers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from mitmproxy import http

from kimiwire.mitm import client_errors, proxy_internals
from kimiwire.mitm.early_head import LateAnswer
from kimiwire.mitm.flow_endings import FlowEnding
from kimiwire.mitm.flow_state import FlowState, loop_running
from kimiwire.mitm.headers import read_headers, remove_header, set_body, set_header
from kimiwire.mitm.proxy_internals import EndKind, EndOutcome
from kimiwire.mitm.retry import (
    Failure,
    exhausted_events,
    final_events,
)
from kimiwire.mitm.stream_callable import DecodingStream, ProxyEnd, RepairingStream
from kimiwire.mitm.watchdog import StreamWatchdog
from kimiwire.wire import chat_exchanges
from kimiwire.wire.capture.redaction import url_for_log
from kimiwire.wire.codecs.content_decoding import (
    BodyDecoder,
    content_encoding,
)
from kimiwire.wire.openai_errors import error_body
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.retry.early_answer import events_for_error_body
from kimiwire.wire.retry.failure_kinds import TurnCheck
from kimiwire.wire.retry.policy import RetryPolicy
from kimiwire.wire.retry.turn_gate import TurnGate
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT

if TYPE_CHECKING:
    from kimiwire.mitm.addon import KimiWire

logger = logging.getLogger("kimiwire")

# A compressed upstream chunk (at most 64 KiB per read) that decodes to more than this is a bomb.
_MIN_DECODED_CHUNK = 1 << 20

_RESPONSE_HEADERS = frozenset({b"content-type", b"content-encoding", b"content-length", b"transfer-encoding"})


class ResponseSide:
    """The response and error hooks' work for one addon (`KimiWire.responses`)."""

    def __init__(self, kw: KimiWire) -> None:
        self.kw = kw
        self._checks_of: tuple[RetryPolicy, frozenset[TurnCheck], bool] | None = None

    def _turn_checks(self) -> tuple[frozenset[TurnCheck], bool]:
        """The retry policy's turn checks and whether it retries a stall: made once per policy
        (the options), not per stream."""
        policy = self.kw.retrier.policy
        known = self._checks_of
        if known is None or known[0] is not policy:
            known = self._checks_of = (policy, policy.turn_checks(), policy.watches("stall"))
        return known[1], known[2]

    def _body_timeout(self, state: FlowState) -> None:
        """A whole response body did not finish in time: the upstream is closed, the error hook
        retries it (stall) or answers 504 (a timer callback: never raises)."""
        state.body_timer = None
        flow = state.flow
        if not flow.live or flow.error is not None:
            return

        def close(_: http.HTTPFlow) -> None:
            seconds = self.kw.limits.idle_timeout
            state.record.add_error(f"kimiwire: the response body did not finish within {seconds:g} s")
            self.kw.recorder.ending(state, FlowEnding.IDLE_TIMEOUT)
            if not proxy_internals.close_upstream(flow):
                proxy_internals.close_connections(flow, "no upstream connection to close after the body timeout")

        self.kw.guarded(flow, "body timeout", close)

    def start_stream(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        assert response is not None
        state = self.kw.flows.get(flow)
        if state is not None:
            state.headers_came()
        context = state.repairs_context if state is not None else None
        if state is not None and context is not None:  # a chat flow: the capture keeps the upstream's own headers
            state.upstream_headers = response.headers.fields
        if state is not None and context is not None and context[0].stream and self.kw.retries.hold_status(state):
            return
        headers = read_headers(response.headers, _RESPONSE_HEADERS)
        if state is not None and state.early_head_sent and context is not None:
            content_type = headers.get(b"content-type", "")
            if response.status_code >= 400 or not chat_exchanges.is_event_stream(content_type):
                facts, policy = context
                repair = lambda body: repair_completion_body(body, facts, policy)[0] or body  # noqa: E731
                late = LateAnswer(response.status_code, content_type, repair)
                if state.early_head is not None:  # (it is: its head was sent)
                    state.early_head.late = late
                response.stream = late
                return
        if not chat_exchanges.is_event_stream(headers.get(b"content-type", "")):
            if state is not None and state.is_chat and self.kw.limits.idle_timeout > 0 and loop_running():
                # A whole body comes right after its headers (the server had it ready): one that
                # stops coming is a stall, like a silent stream.
                state.body_timer = asyncio.get_running_loop().call_later(
                    self.kw.limits.idle_timeout, self._body_timeout, state
                )
            return
        if state is None or context is None:
            if not response.stream:
                response.stream = True  # any other event stream: forward it live, untouched
            return
        header = headers.get(b"content-encoding", "")
        encoding = content_encoding(header)
        if encoding is None:
            self.kw.recorder.note(flow, f"stream not repaired: unsupported content-encoding {header!r}")
            response.stream = True
            return
        facts, policy = context
        # The rewrite changes the length: the client side is re-framed (mitmproxy pitfall P3).
        if b"content-length" in headers:
            remove_header(response.headers, b"content-length")
        if flow.request.data.http_version == b"HTTP/1.1" and headers.get(b"transfer-encoding") != "chunked":
            set_header(response.headers, b"transfer-encoding", b"chunked")
        repairer = StreamRepairer(facts, policy)
        on_error = lambda exc: self.kw.recorder.error(flow, "stream repair", exc)  # noqa: E731
        checks, retry_stall = self._turn_checks()
        gate = None
        if (checks or retry_stall) and proxy_internals.usable():
            gate = TurnGate(facts, checks, policy.tool_stream == "whole", policy.stream_buffer_limit, retry_stall)
        if encoding:
            # Asked for identity, sent compressed anyway: decode it, so the client gets a
            # repaired, timed stream (identity) and the capture a readable body.
            self.kw.recorder.note(
                flow, f"the upstream compressed the stream ({encoding}) despite accept-encoding: identity"
            )
            del response.headers["content-encoding"]
            state.upstream_headers = response.headers.fields
            state.record.set_upstream_content_encoding(encoding)
            decoder = BodyDecoder(encoding, max(policy.stream_buffer_limit, _MIN_DECODED_CHUNK))
            stream: RepairingStream = DecodingStream(
                repairer, decoder, on_error=on_error, limits=self.kw.limits, gate=gate, retry_stall=retry_stall
            )
        else:
            stream = RepairingStream(
                repairer, on_error=on_error, limits=self.kw.limits, gate=gate, retry_stall=retry_stall
            )
        state.stream = stream
        # The first event's deadline counts from the request (its time to first token).
        stream.times.started_at -= max(0.0, time.time() - flow.request.timestamp_start)
        # Its bound __call__, not the object: mitmproxy calls it once per upstream chunk, and a
        # bound method is called without the type's __call__ lookup (docs/performance.md).
        response.stream = stream.__call__
        if loop_running():
            state.watchdog = StreamWatchdog(
                stream,
                lambda reason: self.end_stream(state, stream, reason),
                state.spawn,
                keepalive=lambda: self._keep_alive(state, stream),
            )
            state.watchdog.plan()

    async def _keep_alive(self, state: FlowState, stream: RepairingStream) -> None:
        """A comment to a client still waiting for an answer (never raises: a timer's task)."""
        try:
            if not (stream.waiting or stream.times.tool_section_open):
                return
            sent = await proxy_internals.send_to_client(state.flow, [KEEPALIVE_COMMENT])
            if sent.kind is proxy_internals.SendKind.SENT:
                stream.delivered += KEEPALIVE_COMMENT
                self.kw.counts["retry.keepalive_comments"] += 1
        except Exception as exc:
            self.kw.recorder.error(state.flow, "keepalive", exc)

    async def end_stream(self, state: FlowState, stream: RepairingStream, reason: ProxyEnd) -> EndOutcome:
        flow = state.flow

        def before_end() -> None:
            stream.end_by_proxy(reason)
            self.kw.recorder.ending(state, stream.ending)

        outcome = await proxy_internals.end_stream(flow, before_end)
        if outcome.kind is EndKind.CLOSED:
            self.kw.recorder.ending(state, FlowEnding.CLOSED, outcome.detail)
            state.record.add_error(f"stream could not be ended cleanly: {outcome.detail}")
        logger.info(
            "kimiwire: %s %s ended by the proxy (%s): %s",
            flow.request.method,
            url_for_log(flow.request.path),
            reason,
            outcome,
        )
        return outcome

    def finish_response(self, flow: http.HTTPFlow) -> None:
        state = self.kw.flows.get(flow)
        if state is None:
            return
        state.release()
        response = flow.response
        assert response is not None
        stream = state.stream
        late = state.early_head.late if state.early_head is not None else None
        if stream is None and late is not None:
            if not late.ended:  # a body that came whole with its head (mitmproxy did not stream it)
                late(response.raw_content or b"")
                response.raw_content = b"".join(late(b""))
            state.upstream_body = bytes(late.body)
            state.record.set_delivered(late.delivered)
            return
        if stream is not None:
            if stream.calls == 0:
                # Server replay (or a response set by another addon): the body arrives whole and
                # the stream callable is never called, so repair the whole body here.
                whole = response.raw_content or b""
                repaired = stream(whole) + stream(b"") if whole else stream(b"")
                if stream.failed_turn is not None and stream.gate is not None:
                    # No upstream to ask again here: the failure is made explicit, never silent.
                    verdict = stream.failed_turn
                    tail = final_events(Failure(verdict.kind, verdict.detail, fallback=stream.gate.discard()), 1)
                    stream.delivered += b"".join(tail)
                    repaired += tail
                response.content = b"".join(repaired)
            else:
                # Keep what the upstream really sent as the flow's body; the client's copy is in metadata.
                set_body(response, stream.upstream_bytes())
            self.kw.recorder.stream(state, stream)
            self.kw.recorder.ending(state, stream.ending)
            return
        context = state.repairs_context
        if context is None or not chat_exchanges.is_json(response.headers.get("content-type", "")):
            return
        if response.status_code >= 400:
            return  # upstream errors pass through unchanged
        body = response.get_content(strict=False)
        if not body:
            return
        facts, policy = context
        state.upstream_body = response.raw_content
        new_body, log, why = repair_completion_body(body, facts, policy)
        if why:
            self.kw.recorder.note(flow, f"response not repaired: {why}")
            return
        if new_body is not None:
            response.content = new_body
            state.record.set_delivered(new_body)
        self.kw.recorder.repairs(flow, "response", log)

    def on_error(self, flow: http.HTTPFlow) -> None:
        state = self.kw.flows.of(flow)
        state.release()
        message = flow.error.msg if flow.error else "unknown error"
        state.record.add_error(f"flow error: {message}")
        self.kw.counts["flows.error"] += 1
        stream = state.stream
        client_gone = message == "Client disconnected." or "client disconnect" in message.lower()
        if client_gone:
            self.kw.recorder.ending(state, FlowEnding.CLIENT_DISCONNECTED)
        elif flow.response is None and client_errors.is_client_error(flow):
            # The client's request was refused before it was whole (both Content-Length and
            # Transfer-Encoding, CONNECT in reverse mode, a malformed body): mitmproxy answers 400.
            self.kw.recorder.ending(state, FlowEnding.CLIENT_ERROR)
        elif flow.response is None or (stream is None and buffered(flow.response)):
            # Before any response: connection refused, reset, TLS or DNS failure, first-byte timeout;
            # or a whole body that broke or stalled before it was complete (nothing was sent yet).
            req = flow.request
            if flow.response is None:
                self.kw.detector.failed(req.scheme, req.host, req.port, req.path)
            cause = client_errors.upstream_cause(flow, message, self.kw.error_names_upstream)
            text = f"kimiwire: {self.kw.upstream_name(flow)} failed before responding: {cause}"
            if state.record.ended(FlowEnding.IDLE_TIMEOUT):
                answer = proxy_internals.ErrorAnswer(504, error_body(text, "upstream_timeout", 504), b"")
            else:
                answer = proxy_internals.ErrorAnswer(502, error_body(text, "upstream_error", 502), b"")
            self.answer_error(state, answer, replace=False)
            self.kw.recorder.ending(state, FlowEnding.UPSTREAM_ERROR)
        elif state.held_error is not None and self.kw.json_errors and proxy_internals.can_answer(flow):
            # The held error's body broke before the retry began: the client's stream (200 headers
            # sent) ends with the error event and [DONE].
            tail = b"".join(exhausted_events(Failure("connect", f"the upstream failed: {message}"), 1))
            state.record.set_delivered(tail)
            self.answer_error(state, proxy_internals.ErrorAnswer(502, b"", tail))
            self.kw.recorder.ending(state, FlowEnding.UPSTREAM_ERROR_MID_STREAM)
        elif stream is not None and not stream.ended and self.kw.json_errors and proxy_internals.can_answer(flow):
            # Mid-stream reset or protocol error: end the stream cleanly with an error event. (The
            # tail counts as delivered only where it can be written: HTTP/1, client still there.)
            tail = stream.close_after_upstream_failure(
                f"kimiwire: the upstream connection failed mid-stream: {message}"
            )
            stream.tail_sent(tail)
            self.answer_error(state, proxy_internals.ErrorAnswer(502, b"", tail))
            self.kw.recorder.ending(state, FlowEnding.UPSTREAM_ERROR_MID_STREAM)
        if stream is not None and flow.response is not None:
            flow.response.content = stream.upstream_bytes()
            self.kw.recorder.stream(state, stream)

    def answer_error(self, state: FlowState, answer: proxy_internals.ErrorAnswer, replace: bool = True) -> None:
        if not self.kw.json_errors:
            return
        record = state.record
        if state.early_head_sent and not answer.tail and not answer.raw_sent:
            # The client has an event-stream head: the error goes out as an event, then [DONE].
            answer.tail = b"".join(events_for_error_body(answer.status, answer.body))
        if replace or record.answered_with is None:
            proxy_internals.set_error_answer(state.flow, answer, replace)
            record.set_error_answer(answer.status)


def buffered(response: http.Response) -> bool:
    """The response is read whole before the client gets any of it."""
    return not response.stream
