"""The request side of a chat flow: which requests are chat flows, the body's decoding and size limit
(413), the request repair (on the loop, or in the request worker for a large or compressed body),
a request refused before it is sent (400), credentials restored on client replay, and the
first-byte timeout that starts when the request goes upstream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from kimiwire.mitm import proxy_internals
from kimiwire.mitm.deadline_queue import DeadlineQueue
from kimiwire.mitm.flow_endings import FlowEnding
from kimiwire.mitm.flow_notes import ERROR_MARKER
from kimiwire.mitm.flow_state import FlowState, loop_running
from kimiwire.mitm.headers import append_header, read_headers, set_header
from kimiwire.mitm.request_worker import OFFLOAD_BYTES, WORKER_PROCESS_FLAG, Raised, RecordedRepairs
from kimiwire.wire import chat_exchanges
from kimiwire.wire.capture import replay_credentials
from kimiwire.wire.capture.redaction import carries_placeholder, url_for_log
from kimiwire.wire.codecs.content_decoding import (
    DecodedTooLarge,
    DecodingError,
    content_encoding,
    decode_body,
)
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openai_errors import error_body
from kimiwire.wire.request.repair import RequestRepairResult, repair_request_body

if TYPE_CHECKING:
    from kimiwire.mitm.addon import KimiWire

logger = logging.getLogger("kimiwire")

_NO_LIMIT = 1 << 40

_REQUEST_HEADERS = frozenset({b"content-type", b"content-encoding", b"accept-encoding"})


class RequestSide:
    """The request hook's work for one addon (`KimiWire.requests`)."""

    def __init__(self, kw: KimiWire) -> None:
        self.kw = kw
        self._first_byte_timers: DeadlineQueue | None = None  # every flow's timeout has the same length

    def refused_while_arriving(self, received: int) -> None:
        self.kw.counts["flows.refused_too_large"] += 1
        logger.info(
            "kimiwire: request body refused after %d bytes (kimi_max_request_bytes=%d)",
            received,
            self.kw.max_request_bytes,
        )

    def start_chat_flow(self, flow: http.HTTPFlow, method: str, path: str) -> Any:
        """Every chat flow gets the ending guarantees (first-byte timeout, JSON error answers, a
        watched and cleanly ended stream), whether or not its body can be read and repaired."""
        req = flow.request
        headers = read_headers(req.headers, _REQUEST_HEADERS)
        chat, why_not = chat_exchanges.is_chat_completions(method, path, headers.get(b"content-type", ""))
        if not chat:
            if why_not:
                self.kw.recorder.note(flow, f"request not repaired: {why_not}")
            return
        self.kw.counts["flows.chat"] += 1
        detected = self.kw.detector.seen(req.scheme, req.host, req.port, path)
        policy = self.kw.policy_for(flow)
        state = self.kw.flows.start(flow)
        state.policy = policy
        state.facts = RequestFacts()  # until the body says more
        state.record.start_chat(
            self.kw.limits.as_dict(), self.kw.policies.as_dict(policy), detected, state.facts.as_dict()
        )
        # What the client sent goes into the capture. (Not flow.backup(): it copies the whole flow
        # state on the path to the upstream, which showed up in time to first byte.)
        if self.kw.capture is not None:
            state.client_request = req.get_state()
        # Upstream compression would reach the stream callable still compressed.
        accept_encoding = headers.get(b"accept-encoding")
        if accept_encoding is None:
            append_header(req.headers, b"accept-encoding", b"identity")
        elif accept_encoding != "identity":
            set_header(req.headers, b"accept-encoding", b"identity")
        header = headers.get(b"content-encoding", "")
        # A compressed body goes to the worker whatever its size: a few KB may inflate to the limit.
        if (header or len(req.raw_content or b"") >= OFFLOAD_BYTES) and loop_running():
            return self._prepare_off_loop(state, header)
        raw = self._request_body(state, header)
        if raw is None:
            return None
        self._keep_client_request(state, raw)
        self._start_first_byte_timer(state)
        try:
            self._repair_request(state, raw)
        except Exception as exc:
            self.kw.recorder.error(flow, "request repair", exc)
        return None

    async def _prepare_off_loop(self, state: FlowState, header: str) -> None:
        """A large body: decoded and repaired in the request worker, the results applied here."""
        encoded = state.flow.request.raw_content or b""
        limit = self.kw.max_request_bytes or _NO_LIMIT
        decoded = await self.kw.request_worker.run(_decoded_request, encoded, header, limit)
        raw = self._request_body(state, header, decoded)
        if raw is None:
            return
        self._keep_client_request(state, raw)
        self._start_first_byte_timer(state)
        if not raw:
            return
        worker = self.kw.request_worker
        in_process = worker.repairs_in_process(len(raw))  # (what `repair` decides: no await between them)
        done = await worker.repair(raw, state.policy or self.kw.policy_for(state.flow))
        if isinstance(done, Raised):
            self.kw.recorder.error(state.flow, "request repair", done.error)
            return
        try:
            if in_process:
                self.kw.recorder.flag(state, WORKER_PROCESS_FLAG)
            self._apply_request_repair(state, *done)
        except Exception as exc:
            self.kw.recorder.error(state.flow, "request repair", exc)

    def _keep_client_request(self, state: FlowState, raw: bytes) -> None:
        """With a fallback upstream: the client's own (decoded) body and headers, repaired again for it."""
        if self.kw.fallback is not None and raw:
            state.client_body = raw
            state.client_headers = [
                (k, v) for k, v in state.flow.request.headers.items(multi=True) if k.lower() != "content-encoding"
            ]

    def _start_first_byte_timer(self, state: FlowState) -> None:
        if self.kw.limits.first_byte_timeout > 0 and loop_running():
            loop = asyncio.get_running_loop()
            timers = self._first_byte_timers
            if timers is None or timers.loop is not loop:
                timers = self._first_byte_timers = DeadlineQueue(loop)
            seconds = self.kw.limits.first_byte_timeout
            state.first_byte_timer = timers.call_later(seconds, self._first_byte_timeout, state)

    def _request_body(self, state: FlowState, header: str, decoded: bytes | Raised | None = None) -> bytes | None:
        """The decoded request body, None when there is none to repair. A body that decodes to
        more than kimi_max_request_bytes is answered 413 here, without inflating it further.
        `decoded`: what the request worker made of it already."""
        req = state.flow.request
        encoded = req.raw_content
        if encoded is None:
            self.kw.recorder.note(state.flow, "request not repaired: the body was streamed")
            return b""
        limit = self.kw.max_request_bytes or _NO_LIMIT
        try:
            if decoded is None:
                return _decoded_request(encoded, header, limit)
            if isinstance(decoded, Raised):
                raise decoded.error
            return decoded
        except DecodedTooLarge:
            self._refuse_large_request(state, limit)
            return None
        except DecodingError as exc:
            self.kw.recorder.note(state.flow, f"request not repaired: cannot decode body ({exc})")
            return b""

    def _refuse_large_request(self, state: FlowState, limit: int) -> None:
        flow = state.flow
        message = f"kimiwire: the request body is larger than {limit} bytes (kimi_max_request_bytes)"
        flow.response = http.Response.make(
            413, error_body(message, "invalid_request_error", "request_too_large"), {"content-type": "application/json"}
        )
        state.record.set_error_answer(413)
        state.record.add_error(message)
        self.kw.recorder.ending(state, FlowEnding.REQUEST_TOO_LARGE)

    def _repair_request(self, state: FlowState, raw: bytes) -> None:
        if not raw:
            return  # nothing to repair (streamed or undecodable: noted), forwarded as it came
        self._apply_request_repair(state, repair_request_body(raw, state.policy or self.kw.policy_for(state.flow)))

    def _apply_request_repair(
        self, state: FlowState, result: RequestRepairResult, recorded: RecordedRepairs | None = None
    ) -> None:
        flow, req, record = state.flow, state.flow.request, state.record
        state.facts = result.facts
        record.set_facts(result.facts.as_dict())
        for note in result.notes:
            self.kw.recorder.note(flow, note)
        if result.refusal is not None:
            self._refuse_request(state, result.refusal)
            return
        if result.skipped:
            self.kw.recorder.note(flow, f"request not repaired: {result.skipped}")
            return
        if result.body is not None:
            req.content = result.body
            record.set_upstream_request(result.body)
        if recorded is not None and recorded.entries:
            self.kw.recorder.keep_repairs(flow, "request", recorded)
        elif result.log:
            self.kw.recorder.repairs(flow, "request", result.log)

    def _refuse_request(self, state: FlowState, message: str) -> None:
        """A request the upstream is known to refuse and kimiwire cannot make acceptable: answered
        here with the OpenAI-style 400, nothing sent upstream."""
        state.flow.response = http.Response.make(
            400, error_body(message, "invalid_request_error", None), {"content-type": "application/json"}
        )
        state.record.set_error_answer(400)
        state.record.add_error(message)
        self.kw.recorder.ending(state, FlowEnding.REQUEST_REFUSED)

    def restore_credentials(self, flow: http.HTTPFlow) -> None:
        """Client replay of a capture: its redacted credentials are filled from kimi_replay_auth or removed."""
        req = flow.request
        query = list(req.query.items(multi=True))
        restored = replay_credentials.restore(list(req.headers.items(multi=True)), query, self.kw.replay_credential)
        if restored.changed:
            req.headers = http.Headers([(_raw(k), _raw(v)) for k, v in restored.headers])
            if restored.query != query:
                req.query = restored.query
        if restored.filled:
            self.kw.recorder.note(
                flow, f"replay: credential from kimi_replay_auth put into {', '.join(restored.filled)}"
            )
        left = restored.removed + (["body"] if carries_placeholder(req.raw_content or b"") else [])
        if left:
            why = (
                "no kimi_replay_auth set" if self.kw.replay_credential is None else "not rebuilt from kimi_replay_auth"
            )
            text = f"replayed without redacted credentials ({why}): {', '.join(left)}"
            logger.warning("kimiwire: %s %s %s", req.method, url_for_log(req.path), text)
            state = self.kw.flows.of(flow)
            state.record.add_note(text)
            state.record.add_flag("replay_without_credentials")
            flow.marked = ERROR_MARKER
            self.kw.recorder.describe(state)

    def _first_byte_timeout(self, state: FlowState) -> None:
        """The first-byte timer fired: no response headers came in time (a timer callback: never raises)."""
        state.first_byte_timer = None
        flow = state.flow
        if flow.response is not None or not flow.live:
            return
        self.kw.guarded(flow, "first-byte timeout", lambda _: self._answer_first_byte_timeout(state))

    def _answer_first_byte_timeout(self, state: FlowState) -> None:
        flow = state.flow
        seconds = self.kw.limits.first_byte_timeout
        message = f"kimiwire: {self.kw.upstream_name(flow)} sent no response headers within {seconds:g} s"
        self.kw.responses.answer_error(
            state, proxy_internals.ErrorAnswer(504, error_body(message, "upstream_timeout", 504), b"")
        )
        self.kw.recorder.ending(state, FlowEnding.FIRST_BYTE_TIMEOUT)
        state.record.add_error(message)
        if not proxy_internals.close_upstream(flow):
            proxy_internals.close_connections(flow, "no upstream connection to close after the first-byte timeout")


def _decoded_request(encoded: bytes, header: str, limit: int) -> bytes:
    """The request body with its content-encoding decoded (raises DecodedTooLarge past `limit`,
    DecodingError when it cannot be decoded); pure, so the request worker can run it."""
    if len(encoded) > limit:
        raise DecodedTooLarge(limit)
    encoding = content_encoding(header)
    if encoding is None:
        raise DecodingError(f"unsupported content-encoding {header!r}")
    return decode_body(encoded, encoding, limit) if encoding else encoded


def _raw(text: str) -> bytes:
    """Header text back to the bytes mitmproxy decoded it from."""
    return text.encode("utf-8", "surrogateescape")
