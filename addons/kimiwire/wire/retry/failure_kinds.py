"""Why a turn or an attempt gave no answer: the names the turn gate (response/turn_gate.py) gives
its verdicts and the retry's outcome (retry_outcome.py) its failures, in one place both import.
They also name what the client gets (an error's `code`), the record's `retries_exhausted:<kind>`
and the counters `retry.why.<kind>`."""

from __future__ import annotations

from typing import Literal, get_args

# What the turn gate can check a finished turn for (`kimi_retry_on`'s turn checks).
TurnCheck = Literal["empty", "reasoning_only", "invalid_call", "schema", "forced_tool"]
TURN_CHECKS: tuple[TurnCheck, ...] = get_args(TurnCheck)
# A streamed turn's verdict: a failed check, or the stream stalled before any answer.
VerdictKind = TurnCheck | Literal["stall"]
# An attempt's failure: a verdict, the connection failed, or an error status.
FailureKind = VerdictKind | Literal["connect", "status"]
# Failed verdicts whose output is still an answer: when attempts run out the client gets what came.
DELIVERED_AS_CAME: frozenset[FailureKind] = frozenset({"invalid_call", "schema", "forced_tool"})
