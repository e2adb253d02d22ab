"""One streamed turn through its stages (sans-IO): the stream repairer, the turn gate that holds the
ending until the turn proves to have an answer, and, for a retry streamed into a response the
client already has, the continuation that makes it read as the rest of that response.

The same pipeline runs the first attempt (mitm/stream_callable.py, with no continuation) and a
retry's attempts (mitm/retry.py). The gate never parses the repairer's output again: while it
judges, each read goes through `StreamRepairer.feed_handing_over` (the end through
`end_handing_over`), which returns with the output what the gate reads instead (handover.py: the
texts of the events the fast path took, the chunks the full path parsed or built its events
from); once the turn is proven, through plain `feed`, which hands nothing over.

An exception in a stage costs a repair, never data: what the repairer held goes out unrepaired,
then the bytes it had not yet decoded, and the rest of the stream passes through (`failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.retry.continuation import Continuation
from kimiwire.wire.retry.turn_gate import TurnGate, TurnVerdict, upstream_started_calls

logger = logging.getLogger("kimiwire")


class TurnPipeline:
    def __init__(
        self, repairer: StreamRepairer, gate: TurnGate | None = None, continuation: Continuation | None = None
    ) -> None:
        self.repairer = repairer
        self.gate = gate
        self.continuation = continuation
        self.failed = False  # a stage raised: the rest of the stream passes through
        self.failure: BaseException | None = None  # what raised
        self.verdict: TurnVerdict | None = None  # set by `end`: why the turn gave no answer, or None

    @property
    def proven(self) -> bool:
        """The turn has an answer (or nothing is judged): everything passes from now on."""
        return self.gate is None or self.gate.proven

    def feed(self, data: bytes) -> list[bytes]:
        """One upstream read: repaired, judged, continued."""
        repairer = self.repairer
        if self.failed:
            return self._continued([data] if data else [])
        gate = self.gate
        judging = gate if gate is not None and not gate.proven else None
        undecoded = repairer.undecoded()
        try:
            if judging is None:
                out = repairer.feed(data)
            else:
                out, handover = repairer.feed_handing_over(data)
        except Exception as exc:
            out = self._fail(exc, undecoded + data)
        else:
            if repairer.failure is not None:
                # The repairer caught it itself: nothing was lost; the rest passes through.
                self.failed = True
                self.failure = repairer.failure
                if gate is not None:
                    out[:0] = gate.open()
            elif judging is not None:
                out = judging.take(data, out, handover)
                if repairer.answered_in_reasoning and not judging.proven:  # never retried away
                    out += judging.open()
        return self._continued(out)

    def end(self, drop_partial: bool = False) -> list[bytes]:
        """The upstream body ended: what is held is flushed and the turn judged. A turn without an
        answer (`verdict`) keeps its ending held, for `discard`; what the gate let pass is returned
        then as the repairer made it, not continued (a retry drops it, the first attempt sends it)."""
        repairer = self.repairer
        gate = self.gate
        undecoded = repairer.undecoded()
        try:
            if gate is None or gate.proven:
                out = repairer.end(drop_partial=drop_partial)
            else:
                out, handover = repairer.end_handing_over(drop_partial)
                out = gate.feed(out, handover)
                self.verdict = gate.verdict()
                if self.verdict is None:
                    out += gate.open()
        except Exception as exc:
            out = self._fail(exc, undecoded)
        if repairer.failure is not None and not self.failed:
            self.failed = True  # (what it held already went through the gate above)
            self.failure = repairer.failure
        return out if self.verdict is not None else self._continued(out)

    def end_with_error(self, error_event: bytes) -> list[bytes]:
        """The stream is cut short: what the gate and the repairer hold, then `error_event`, then
        [DONE]."""
        undecoded = self.repairer.undecoded()
        try:
            held = self.gate.open() if self.gate is not None else []
            out = held + self.repairer.end_with_error(error_event)
        except Exception as exc:
            out = self._fail(exc, undecoded)
        return self._continued(out)

    def stalled_unanswered(self, upstream: Callable[[], bytes]) -> bool:
        """The turn gave the client no answer and no call was under way (the upstream's own bytes,
        `upstream()`, looked at only when all else says so): a stall that may be retried."""
        gate = self.gate
        return gate is not None and not gate.proven and not gate.seen.calls and not upstream_started_calls(upstream())

    def open(self) -> list[bytes]:
        """Stop judging: what the gate holds goes out."""
        return self._continued(self.gate.open()) if self.gate is not None else []

    def discard(self) -> list[bytes]:
        """The turn is retried or replaced: what the gate held, dropped (returned for the record)."""
        return self._continued(self.gate.discard()) if self.gate is not None else []

    def _fail(self, exc: Exception, unread: bytes) -> list[bytes]:
        """Nothing may be lost: what the repairer held goes out unrepaired, then `unread` (the raw
        bytes it had not decoded and this read); the gate opens; the rest passes through."""
        self.failed = True
        self.failure = exc
        out: list[bytes] = []
        try:
            self.repairer.release_held(out, include_undecoded=False)
        except Exception:
            logger.exception("kimiwire: could not release held stream data")
        if unread:
            out.append(unread)
        if self.gate is not None:
            out[:0] = self.gate.open()
        return out

    def _continued(self, out: list[bytes]) -> list[bytes]:
        return self.continuation.rewrite(out) if self.continuation is not None and out else out
