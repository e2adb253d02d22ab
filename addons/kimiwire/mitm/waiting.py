"""While a streamed request waits for its first answer: the early head and its comments for an
HTTP/1 client (mitm/early_head.py), and the hedged second attempt after kimi_hedge_after
(mitm/hedge.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from mitmproxy import http

from kimiwire.mitm import proxy_internals
from kimiwire.mitm.early_head import EarlyHead
from kimiwire.mitm.flow_state import FlowState, loop_running
from kimiwire.mitm.hedge import HedgeRace
from kimiwire.mitm.retry import (
    Attempt,
)
from kimiwire.mitm.stream_callable import ProxyEnd

if TYPE_CHECKING:
    from kimiwire.mitm.addon import KimiWire

logger = logging.getLogger("kimiwire")


class WaitingPlans:
    """What a streamed request gets while the upstream is silent (`KimiWire.waiting`)."""

    def __init__(self, kw: KimiWire) -> None:
        self.kw = kw

    def plan_hedge(self, flow: http.HTTPFlow) -> None:
        state = self.kw.flows.get(flow)
        policy = self.kw.retrier.policy
        if self.kw.hedge_after <= 0 or state is None or state.facts is None or not state.facts.stream:
            return
        if flow.response is not None or not policy.watches("stall") or policy.retries < 1:
            return  # (the hedge answers as the stall's retry)
        if not loop_running() or not proxy_internals.usable():
            return
        wait = max(0.0, flow.request.timestamp_start + self.kw.hedge_after - time.time())
        state.hedge_timer = asyncio.get_running_loop().call_later(wait, self._hedge_due, state)

    def _first_sent_event(self, state: FlowState) -> bool:
        """Has the first attempt sent the client an event (more than comments)?"""
        return state.stream is not None and bool(state.stream.times.events_seen)

    def _hedge_due(self, state: FlowState) -> None:
        """kimi_hedge_after passed (a timer callback: never raises): the hedge starts unless the
        first attempt sent an event, or a retry is under way already."""
        state.hedge_timer = None
        flow = state.flow

        def start(_: http.HTTPFlow) -> None:
            context = state.repairs_context
            if context is None or not flow.live or state.record.attempted or self._first_sent_event(state):
                return
            if state.stream is not None and (state.stream.ended or state.stream.failed_turn is not None):
                return
            facts, wire_policy = context
            race = HedgeRace(
                flow, lambda: self._first_sent_event(state), lambda: self._end_first(state), self.kw.counts
            )
            attempt = Attempt(2, "hedge")
            state.hedge = race
            race.start(
                attempt,
                lambda sink: self.kw.retrier.stream_attempt(
                    flow, attempt, facts, wire_policy, race.continuation, sink, race.success
                ),
            )
            self.kw.recorder.note(flow, f"no first event after {self.kw.hedge_after:g} s: a hedged attempt started")

        self.kw.guarded(flow, "hedge", start)

    def _end_first(self, state: FlowState) -> None:
        """The hedge showed content first: the first attempt ends (its retry adopts the hedge)."""
        flow, stream = state.flow, state.stream
        if stream is not None:
            state.spawn(self.kw.responses.end_stream(state, stream, ProxyEnd.FIRST_EVENT))
        elif flow.response is None:
            proxy_internals.close_upstream(flow)

    def plan_early_head(self, flow: http.HTTPFlow) -> None:
        """A streamed chat request from an HTTP/1 client: an early head and comments while the
        upstream sends no headers (mitm/early_head.py)."""
        state = self.kw.flows.get(flow)
        keepalive = self.kw.limits.keepalive
        if state is None or state.facts is None or not state.facts.stream or flow.response is not None:
            return
        if keepalive <= 0 or not self.kw.json_errors or not loop_running() or not proxy_internals.can_answer(flow):
            return
        state.early_head = EarlyHead(flow, state.record, keepalive, self._early_comment)
        state.early_head.start()

    def _early_comment(self) -> None:
        self.kw.counts["retry.keepalive_comments"] += 1
