"""Shutdown: open streams ended cleanly within kimi_shutdown_grace, large captures waited for, the
flows still under way recorded as they are, the stats logged and the capture closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx

from kimiwire.mitm.flow_endings import FlowEnding
from kimiwire.mitm.flow_state import FlowState, loop_running
from kimiwire.mitm.stream_callable import ProxyEnd, RepairingStream

if TYPE_CHECKING:
    from kimiwire.mitm.addon import KimiWire

logger = logging.getLogger("kimiwire")


class Shutdown:
    """The `done` hook's work (`KimiWire.shutdown`)."""

    def __init__(self, kw: KimiWire) -> None:
        self.kw = kw

    def done(self) -> Any:
        """At shutdown (SIGTERM, SIGINT) open streams are first ended cleanly, within
        kimi_shutdown_grace; on a script reload everything is let go at once."""
        master = getattr(ctx, "master", None)
        stopping = master is not None and master.should_exit.is_set() and loop_running()
        if stopping and (self.kw.capture_tasks or (self.kw.shutdown_grace > 0 and self._open_streams())):
            return self._done_after_grace()
        self._done_now()
        return None

    def _open_streams(self) -> list[tuple[FlowState, RepairingStream]]:
        return [
            (state, state.stream)
            for state in self.kw.flows.open_states()
            if state.stream is not None and state.flow.live and not state.stream.ended and state.is_chat
        ]

    async def _done_after_grace(self) -> None:
        """Each open stream gets what was held, a proxy_shutdown error event and [DONE], and its
        body ends (the response hook then records and captures it as usual)."""
        streams = self._open_streams() if self.kw.shutdown_grace > 0 else []
        if streams:
            logger.info("kimiwire: shutting down: ending %d open stream(s) cleanly", len(streams))
            endings = [
                state.spawn(self.kw.responses.end_stream(state, stream, ProxyEnd.SHUTDOWN)) for state, stream in streams
            ]
            _, late = await asyncio.wait(endings, timeout=self.kw.shutdown_grace)
            if late:
                logger.warning("kimiwire: %d stream(s) not ended within kimi_shutdown_grace", len(late))
            await asyncio.sleep(0)  # the response hooks the endings started
        if self.kw.capture_tasks:  # large flows' records are written before the capture is closed
            await asyncio.wait(set(self.kw.capture_tasks))
        self._done_now()

    def _done_now(self) -> None:
        logger.info("kimiwire stats: %s", self.kw.stats_summary())
        self.kw.shut_down = True
        self.kw.detector.cancel()
        self._finish_open_flows()
        if self.kw.capture is not None:
            if self.kw.capture.flows_lost or self.kw.capture_problem:
                problem = f"; {self.kw.capture_problem}" if self.kw.capture_problem else ""
                logger.warning("kimiwire: %s%s", self.kw.capture.summary(), problem)
            elif self.kw.capture.flows_written:
                logger.info("kimiwire: %s", self.kw.capture.summary())
            self.kw.capture.close()
        self.kw.flows.clear()
        self.kw.request_worker.close()

    def _finish_open_flows(self) -> None:
        """At shutdown (SIGTERM, SIGINT) the flows still under way are recorded as they are now:
        delivered is what was written to the client. mitmproxy's error hooks for them come after
        this, while connections are torn down, and are ignored."""
        for state in self.kw.flows.open_states():
            flow = state.flow
            if not state.is_chat or not flow.live:
                continue
            try:
                state.release()
                self.kw.recorder.ending(state, FlowEnding.SHUTDOWN)
                if state.stream is not None and flow.response is not None:
                    flow.response.content = state.stream.upstream_bytes()
                    self.kw.recorder.stream(state, state.stream)
            except Exception as exc:
                self.kw.recorder.error(flow, "shutdown", exc)
            self.kw.recorder.flow_over(flow)
