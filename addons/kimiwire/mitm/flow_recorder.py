"""What kimiwire writes about a flow: its ending (the first one wins; kimi.stats counts one ending
per chat flow, when the flow is over), its repairs, notes and errors, the mark and comment for
humans (mitmweb), what a repaired stream left, and at the end the capture record (written on the
loop, or made in the request worker for a large flow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from kimiwire.mitm import large_capture
from kimiwire.mitm.capture import CaptureFile, saved_state
from kimiwire.mitm.flow_endings import CUT_SHORT, RETRY_ENDINGS, FlowEnding, kind_of
from kimiwire.mitm.flow_notes import ERROR_MARKER, MARKER, gave_up, retry_words
from kimiwire.mitm.flow_state import FlowState, loop_running
from kimiwire.mitm.request_worker import OFFLOAD_BYTES, Raised, RecordedRepairs
from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.wire.capture.redaction import url_for_log
from kimiwire.wire.repairs import RepairLog

if TYPE_CHECKING:
    from kimiwire.mitm.addon import KimiWire

logger = logging.getLogger("kimiwire")


class FlowRecorder:
    """The flow record's writer, one per addon (`KimiWire.recorder`)."""

    def __init__(self, kw: KimiWire) -> None:
        self.kw = kw

    def ending(self, state: FlowState, how: FlowEnding, detail: str = "") -> None:
        """Record how the flow ended (the first call wins); kimi.stats counts it once, when the flow is over.
        `detail`, when given, follows the ending's name in the record (`FlowEnding.detailed`)."""
        recorded = state.record.set_ending(how.detailed(detail) if detail else how)
        if recorded and (how in CUT_SHORT or how in RETRY_ENDINGS):  # findable: ~marked, ~comment ended, ~comment retr
            self.describe(state)

    def count_ending(self, state: FlowState) -> None:
        """One ending per chat flow in kimi.stats: the one its record keeps (a retry may replace the
        first attempt's), or, for a flow nothing ended early, natural (or error, when it failed)."""
        ending = state.record.settle_ending(natural=state.flow.error is None)
        self.kw.counts[f"ending.{kind_of(ending)}"] += 1

    def repairs(self, flow: http.HTTPFlow, phase: str, log: RepairLog) -> None:
        if not log:
            return
        entries = log.as_list()
        for entry in entries:
            entry["phase"] = phase
        self.kw.flows.of(flow).record.add_repairs(entries)
        self.kw.counts.update(log.counts())
        self.describe(self.kw.flows.of(flow))
        logger.info("kimiwire %s %s %s: %s", phase, flow.request.method, url_for_log(flow.request.path), log.summary())

    def keep_repairs(self, flow: http.HTTPFlow, phase: str, recorded: RecordedRepairs) -> None:
        """`_record_repairs` for a log the request worker made ready for the record."""
        self.kw.flows.of(flow).record.add_repairs(recorded.entries)
        self.kw.counts.update(recorded.counts)
        self.describe(self.kw.flows.of(flow))
        logger.info(
            "kimiwire %s %s %s: %s", phase, flow.request.method, url_for_log(flow.request.path), recorded.summary
        )

    @staticmethod
    def describe(state: FlowState) -> None:
        """The flow's mark and comment for humans (mitmweb): repairs by kind, a cut-short ending,
        the places where kimiwire failed."""
        flow, record = state.flow, state.record
        counts = Counter(r["kind"] for r in record.repairs)
        words = [f"{k}={n}" for k, n in sorted(counts.items())] + record.flags + retry_words(record.data)
        ending = kind_of(record.ending)
        if ending in CUT_SHORT:
            words.append(f"ended={ending}")
        if not words and not state.failed_in:
            return
        if gave_up(record.data):
            flow.marked = ERROR_MARKER  # the client got the failure
        elif not flow.marked:
            flow.marked = MARKER
        flow.comment = " ".join(["kimiwire:", *words, *(f"error in {where}" for where in state.failed_in)])

    def flag(self, state: FlowState, flag: str) -> None:
        """A fact about how kimiwire handled the flow, in its record's flags and its comment."""
        state.record.add_flag(flag)
        self.describe(state)

    def error(self, flow: http.HTTPFlow, where: str, exc: BaseException) -> None:
        logger.exception(
            "kimiwire: %s failed on %s; the flow passes through unrepaired", where, url_for_log(flow.request.url)
        )
        self.kw.flows.of(flow).record.add_error(f"{where}: {type(exc).__name__}: {exc}")
        self.kw.counts["addon.error"] += 1
        flow.marked = ERROR_MARKER
        state = self.kw.flows.of(flow)
        state.failed_in.append(where)
        self.describe(state)

    def note(self, flow: http.HTTPFlow, text: str) -> None:
        self.kw.flows.of(flow).record.add_note(text)
        logger.info("kimiwire: %s %s: %s", flow.request.method, url_for_log(flow.request.path), text)

    def stream(self, state: FlowState, stream: RepairingStream) -> None:
        """What a repaired stream leaves on its flow, however it ended."""
        flow = state.flow
        record = state.record
        stream.settle()
        record.set_delivered(stream.delivered_bytes())
        if stream.error_event is not None:
            record.set_error_event(stream.error_event)
        record.set_stream(
            stream.repairer.events_in,
            len(stream.upstream_bytes()),
            len(stream.delivered_bytes()),
            stream.failed or stream.repairer.bypass,
        )
        if stream.repairer.log:
            self.repairs(flow, "response", stream.repairer.log)

    def flow_over(self, flow: http.HTTPFlow) -> None:
        """Count the flow's bytes, write it to the capture file and forget its state; never raises."""
        state = self.kw.flows.drop(flow)
        if state is None or not state.is_chat:
            return
        record = state.record
        self.count_ending(state)
        try:
            response = flow.response
            body = state.upstream_body
            if body is None and response is not None:
                body = response.raw_content or b""
            record.keep_upstream_request(flow.request.raw_content or b"")
            if response is not None:
                delivered = record.delivered
                if delivered is None:
                    delivered = response.raw_content or b""
                if delivered == body:
                    record.forget_delivered()  # kept once: the flow's response body
                else:
                    record.set_delivered(delivered)
                stream = state.stream
                first_byte: float | None
                last_byte: float | None
                if stream is not None:
                    first_byte, last_byte = stream.first_byte_at, stream.last_byte_at or time.time()
                else:
                    first_byte, last_byte = response.timestamp_start, response.timestamp_end
                record.set_timings(flow.request.timestamp_start, first_byte, last_byte)
            req = flow.request
            if (
                response is not None
                and response.status_code == 200
                and self.kw.detector.wants_answer(req.scheme, req.host, req.port)
            ):
                streamed = state.stream is not None
                self.kw.detector.read_answer(req.scheme, req.host, req.port, body or b"", streamed)
            self.kw.counts["bytes.upstream"] += len(body or b"")
            delivered_now = record.delivered
            self.kw.counts["bytes.delivered"] += len(delivered_now if delivered_now is not None else body or b"")
            if self.kw.capture is not None:
                parts = (flow, state.client_request, state.upstream_headers, body, self.kw.redactor)
                if loop_running() and len(flow.request.raw_content or b"") + len(body or b"") >= OFFLOAD_BYTES:
                    self._capture_off_loop(self.kw.capture, parts)
                else:
                    self.kw.capture.write(saved_state(*parts))
        except Exception as exc:
            self.error(flow, "capture", exc)

    def _capture_off_loop(self, capture: CaptureFile, parts: tuple[Any, ...]) -> None:
        """A large flow's capture state (its bodies' redaction walks whole JSON documents) is made in
        the request worker; the record is appended here, on the loop, like every other."""

        async def write(capture: CaptureFile) -> None:
            record = await large_capture.encoded_record(self.kw.request_worker, *parts)
            capture.write(record.error if isinstance(record, Raised) else record)

        task = asyncio.get_running_loop().create_task(write(capture))
        self.kw.capture_tasks.add(task)
        task.add_done_callback(self.kw.capture_tasks.discard)
