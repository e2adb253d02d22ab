"""What one attempt came to, and what the client gets when a request's attempts run out (sans-IO).

Every retry path (a turn that streamed live, a buffered response, a failure before response
headers) ends through `exhausted_answer` or `exhausted_events`, so the client of a retried request
gets the answer a first attempt with the same failure would have got:

- an empty or reasoning-only turn: an `upstream_empty_turn` error (an error event and `[DONE]` in
  a stream, a 502 JSON body otherwise): never a silent empty success;
- invalid calls (`invalid_call`, `schema`) and a forced tool not called (`forced_tool`): the last
  attempt's answer as it came (every call the upstream made reaches the client);
- an error status: that status and the upstream's body (an error event naming the status once a
  stream has started);
- a stall: 504 `upstream_timeout`; a connection failure or anything else: 502 `upstream_error`;
- the first attempt's error status when no other attempt was made: the upstream's response as it
  came (`as_it_came`); a retry that failed inside kimiwire: `retry_failed_events`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kimiwire.wire.codecs.sse import DONE_EVENT
from kimiwire.wire.openai_errors import error_body, error_event
from kimiwire.wire.retry.failure_kinds import DELIVERED_AS_CAME, FailureKind

EMPTY_TURN_MESSAGE = "kimiwire: the upstream ended the turn without an answer ({detail}) after {attempts} attempt(s)"
_TURN_KINDS: frozenset[FailureKind] = frozenset({"empty", "reasoning_only"})
_CALL_KINDS = DELIVERED_AS_CAME  # answers all the same: the last attempt goes out as it came
JSON = "application/json"
EVENT_STREAM = "text/event-stream"


@dataclass
class Failure:
    """Why an attempt gave no answer, and what to deliver if it stays the last one."""

    kind: FailureKind
    detail: str
    retry_after: float | None = None
    status: int | None = None
    body: bytes = b""  # the upstream's body: an error status's, or a non-streamed turn's
    fallback: list[bytes] = field(default_factory=list)  # invalid calls as they came, ending included
    final: bool = False  # not worth retrying (a status that is not transient)


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """A whole response for a client that has been sent nothing yet."""

    status: int
    content_type: str
    body: bytes


def exhausted_events(failure: Failure, attempts: int) -> list[bytes]:
    """The events that end a client's stream when attempts run out."""
    if failure.kind in _CALL_KINDS and failure.fallback:
        return failure.fallback
    if failure.kind in _TURN_KINDS:
        message = EMPTY_TURN_MESSAGE.format(detail=failure.detail, attempts=attempts)
        return [error_event(message, "upstream_empty_turn", "upstream_empty_turn"), DONE_EVENT]
    if failure.kind == "status":
        return [error_event(f"kimiwire: {failure.detail}", "upstream_error", failure.status), DONE_EVENT]
    error_type = "upstream_timeout" if failure.kind == "stall" else "upstream_error"
    return [
        error_event(f"kimiwire: {failure.detail} (after {attempts} attempts)", error_type, failure.kind),
        DONE_EVENT,
    ]


def exhausted_answer(failure: Failure, attempts: int, streamed: bool, delivered: bytes, upstream: str) -> ClientAnswer:
    """The whole response for a client that got nothing yet when attempts run out. `delivered` is
    what a streamed request's attempts produced for the client so far (a role chunk, reasoning),
    `upstream` how error messages name the upstream."""
    if failure.kind == "status" and failure.status is not None:
        return ClientAnswer(failure.status, JSON, failure.body or error_body(failure.detail, "upstream_error", None))
    if streamed and failure.kind not in ("connect", "stall"):
        return ClientAnswer(200, EVENT_STREAM, delivered + b"".join(exhausted_events(failure, attempts)))
    if failure.kind in _CALL_KINDS and failure.body:
        return ClientAnswer(200, JSON, failure.body)
    if failure.kind in _TURN_KINDS:
        status, error_type = 502, "upstream_empty_turn"
    elif failure.kind == "stall":
        status, error_type = 504, "upstream_timeout"
    else:
        status, error_type = 502, "upstream_error"
    message = f"kimiwire: no answer from {upstream} after {attempts} attempt(s): {failure.kind}: {failure.detail}"
    return ClientAnswer(status, JSON, error_body(message, error_type, status))


def as_it_came(last: Failure, first: Failure) -> bool:
    """No other attempt was made after the first one's error status: the client gets the upstream's
    response unchanged (its status, headers and body), not an answer made from the failure."""
    return last is first and last.kind == "status"


def retry_failed_events() -> list[bytes]:
    """The events that end a client's stream when the retry itself failed (an exception in kimiwire)."""
    return [error_event("kimiwire: the retry failed", "upstream_error", None), DONE_EVENT]
