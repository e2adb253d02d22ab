"""One flow's state in the adapter: created once, looked up by flow id, dropped when the flow ends.

`FlowStates` (the adapter keeps one, `KimiWire.flows`):
- `start(flow)`: a fresh state for a chat-completions request (the request hook; a replayed flow's
  old record is dropped);
- `of(flow)`: the flow's state, created on first use for any other flow that needs a record;
- `get(flow)`: the state or None;
- `drop(flow)`: stop the flow's timers and forget it (the `response`/`error` hooks, at the end);
  returns its state.

`FlowState` holds what one flow needs between hooks: `policy` and `facts` (facts stay None when
the request body could not be parsed), `stream` (the `RepairingStream` once response headers
came), `first_byte_timer` (cancelled when the response headers come), `watchdog` (the stream's
deadline timer), `tasks` (a proxy ending under way), `client_request` (what the client sent, for
the capture), `upstream_headers` and `upstream_body` (what the upstream sent, for the capture),
`failed_in` (hooks that raised), and `record`: the `FlowRecord` (mitm/flow_record.py) that wraps
the dict stored as `flow.metadata["kimiwire"]`, which tests, captures and scripts read; every
write to it goes through the record's methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from kimiwire.mitm.flow_record import METADATA_KEY, FlowRecord, flow_record
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.servers.policy import Policy

__all__ = ["METADATA_KEY", "FlowRecord", "FlowState", "FlowStates", "flow_record", "loop_running"]

if TYPE_CHECKING:
    from kimiwire.mitm.deadline_queue import QueuedTimer
    from kimiwire.mitm.early_head import EarlyHead
    from kimiwire.mitm.hedge import HedgeRace
    from kimiwire.mitm.status_stream import HeldError
    from kimiwire.mitm.stream_callable import RepairingStream
    from kimiwire.mitm.watchdog import StreamWatchdog


@dataclass(eq=False)
class FlowState:
    flow: http.HTTPFlow
    record: FlowRecord
    policy: Policy | None = None
    facts: RequestFacts | None = None
    stream: RepairingStream | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    first_byte_timer: asyncio.TimerHandle | QueuedTimer | None = None
    body_timer: asyncio.TimerHandle | None = None  # a whole (not streamed) response body must come in time
    watchdog: StreamWatchdog | None = None
    client_request: dict[str, Any] | None = None
    upstream_headers: Any = None
    upstream_body: bytes | None = None
    failed_in: list[str] = field(default_factory=list)  # where kimiwire raised on this flow (for the comment)
    held_error: HeldError | None = None  # a streamed request's retryable error status, held while the retry streams
    client_body: bytes | None = None  # the client's own decoded body (kept only for a fallback upstream)
    client_headers: list[tuple[str, str]] | None = None
    hedge: HedgeRace | None = None  # a HedgeRace (kimi_hedge_after): a second attempt beside the first
    hedge_timer: asyncio.TimerHandle | None = None
    early_head: EarlyHead | None = None  # an EarlyHead: the client's head and comments while no upstream headers came

    @property
    def early_head_sent(self) -> bool:
        return self.early_head is not None and self.early_head.sent

    @property
    def is_chat(self) -> bool:
        """A chat-completions flow: repaired, captured, given the ending guarantees."""
        return self.record.is_chat

    @property
    def repairs_context(self) -> tuple[RequestFacts, Policy] | None:
        """What the response repairs need; None when the request body was not parsed."""
        if self.facts is None or self.policy is None:
            return None
        return self.facts, self.policy

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def release(self) -> None:
        """The flow is over: stop its timers (but not the one that is ending it right now)."""
        if self.tasks:
            current = asyncio.current_task() if loop_running() else None
            for task in list(self.tasks):
                if task is not current:
                    task.cancel()
        self.stop_timers()

    def stop_timers(self) -> None:
        self.headers_came()
        if self.hedge_timer is not None:
            self.hedge_timer.cancel()
            self.hedge_timer = None
        if self.hedge is not None:
            self.hedge.cancel("the flow is over")
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.watchdog is not None:
            self.watchdog.stop()

    def headers_came(self) -> None:
        """The first-byte timeout no longer applies (nor the early head's comments)."""
        if self.early_head is not None:
            self.early_head.stop()
        if self.first_byte_timer is not None:
            self.first_byte_timer.cancel()
            self.first_byte_timer = None

    @property
    def pending(self) -> int:
        """Tasks and timers still to run for this flow."""
        watching = self.watchdog is not None and self.watchdog.waiting
        timers = (self.first_byte_timer is not None) + (self.body_timer is not None)
        timers += self.early_head is not None and self.early_head.pending
        return len(self.tasks) + timers + watching


class FlowStates:
    def __init__(self) -> None:
        self._states: dict[str, FlowState] = {}

    def start(self, flow: http.HTTPFlow) -> FlowState:
        old = self._states.pop(flow.id, None)
        if old is not None:
            old.release()
        flow.metadata.pop(METADATA_KEY, None)  # a replayed flow brings the record of its first run
        state = self._states[flow.id] = FlowState(flow, FlowRecord.of(flow))
        return state

    def of(self, flow: http.HTTPFlow) -> FlowState:
        state = self._states.get(flow.id)
        if state is None:
            state = self._states[flow.id] = FlowState(flow, FlowRecord.of(flow))
        return state

    def get(self, flow: http.HTTPFlow) -> FlowState | None:
        return self._states.get(flow.id)

    def drop(self, flow: http.HTTPFlow) -> FlowState | None:
        state = self._states.pop(flow.id, None)
        if state is not None:
            state.release()
        return state

    def open_states(self) -> list[FlowState]:
        return list(self._states.values())

    def clear(self) -> None:
        for state in self._states.values():
            for task in state.tasks:
                task.cancel()
            state.stop_timers()
        self._states.clear()

    @property
    def active_tasks(self) -> int:
        return sum(state.pending for state in self._states.values())

    def __len__(self) -> int:
        return len(self._states)


def loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
