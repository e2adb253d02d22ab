"""When the proxy asks the upstream again, and how long it waits first (pure: no clock, no IO).

Reasons a turn is retried (`kimi_retry_on`, a comma list):
- `empty`: the turn ended with no content and no tool call (also a turn of empty `tool_calls: []`
  deltas, vllm#54701; SGLang's role-chunk-then-stop turn, sglang#23341, MoonshotAI/Kimi-K2.5#9);
- `reasoning_only`: reasoning, then an end with no content and no call (vllm-ascend#9361, vllm#33654);
- `stall`: headers came but no content or tool call before the first-event or idle timeout;
- `connect`: refused, reset, TLS or DNS failure before response headers;
- `status`: 429, 500, 502, 503 or 504 before anything was delivered (Retry-After honoured);
- `invalid_call`: the turn's only output is tool calls and one of them is unusable after repair
  (arguments that do not parse to an object, Kimi markup left in them);
- `schema` (opt-in): a call's arguments violate the JSON schema the request declared;
- `forced_tool`: the client forced a tool call that was sent as `tool_choice: auto` (Moonshot refuses
  forcing while the model thinks) and the turn called no such tool.

Attempts are bounded twice: `retries` extra attempts, and `budget` seconds for all attempts of one
flow. Between attempts: exponential backoff with full jitter (base `backoff`, doubling), or the
upstream's Retry-After when it asks for longer; an attempt that could not start within the budget
is not made.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from typing import Any

import orjson

from kimiwire.wire.retry.failure_kinds import TURN_CHECKS, FailureKind, TurnCheck

RETRY_REASONS: tuple[FailureKind, ...] = (
    "empty",
    "reasoning_only",
    "stall",
    "connect",
    "status",
    "invalid_call",
    "schema",
    "forced_tool",
)
_REASON_NAMED: dict[str, FailureKind] = {reason: reason for reason in RETRY_REASONS}
DEFAULT_RETRY_ON = "empty,reasoning_only,stall,connect,status,invalid_call,forced_tool"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0
# Connection failures that another attempt cannot cure: the upstream's certificate is not trusted
# (Python's ssl and OpenSSL texts). The client is better served by the error at once.
_LASTING_CONNECT_FAILURES = ("certificate verify failed", "certificate_verify_failed", "hostname mismatch")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    reasons: frozenset[FailureKind] = frozenset(_REASON_NAMED[name] for name in DEFAULT_RETRY_ON.split(","))
    retries: int = 2
    budget: float = 200.0  # two attempts stalled before their first event (90 s each), and a third
    backoff: float = 0.5
    stream: bool = True  # a retry of a streamed request is streamed too (False: sent non-streamed)

    @classmethod
    def parse(
        cls, retry_on: str, retries: int, budget: float, backoff: float = 0.5, stream: bool = True
    ) -> RetryPolicy:
        names = frozenset(item.strip() for item in retry_on.split(",") if item.strip())
        unknown = sorted(names - _REASON_NAMED.keys())
        if unknown:
            raise ValueError(f"kimi_retry_on: unknown reason {', '.join(unknown)} (known: {', '.join(RETRY_REASONS)})")
        reasons = frozenset(_REASON_NAMED[name] for name in names)
        if retries < 0:
            raise ValueError("kimi_retries must be 0 or more")
        return cls(reasons, retries, budget, backoff, stream)

    @property
    def active(self) -> bool:
        """Anything is watched at all (`kimi_retry_on=` empty: today's pass-through)."""
        return bool(self.reasons)

    def watches(self, reason: FailureKind) -> bool:
        return reason in self.reasons

    def turn_checks(self) -> frozenset[TurnCheck]:
        """The turn verdicts that are acted on (retried, or made explicit when attempts run out)."""
        return frozenset(check for check in TURN_CHECKS if check in self.reasons)

    def as_dict(self) -> dict[str, object]:
        return {
            "retry_on": sorted(self.reasons),
            "retries": self.retries,
            "budget": self.budget,
            "backoff": self.backoff,
            "stream": self.stream,
        }


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay: float = 0.0
    why_not: str | None = None


def lasting_connect_failure(message: str) -> bool:
    """A connection failure no retry can cure (an untrusted or mismatched certificate)."""
    text = message.lower()
    return any(sign in text for sign in _LASTING_CONNECT_FAILURES)


def backoff_delay(attempt: int, base: float, jitter: float) -> float:
    """Full jitter: a uniform share (`jitter` in [0, 1)) of base * 2^(attempt-1), capped.
    `attempt` is the number of the attempt that just failed, from 1."""
    ceiling: float = min(MAX_BACKOFF, base * 2 ** max(0, attempt - 1))
    return ceiling * min(max(jitter, 0.0), 1.0)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header (delta-seconds or an HTTP date) as seconds from `now` (epoch)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def decide(
    policy: RetryPolicy,
    reason: FailureKind,
    attempts_made: int,
    elapsed: float,
    jitter: float,
    retry_after: float | None = None,
) -> RetryDecision:
    """Whether to make another attempt after attempt number `attempts_made` failed for `reason`,
    `elapsed` seconds after the flow started, and how long to wait before it."""
    if not policy.watches(reason):
        return RetryDecision(False, why_not=f"{reason} is not in kimi_retry_on")
    if attempts_made > policy.retries:
        return RetryDecision(False, why_not=f"{policy.retries} retries used")
    delay = backoff_delay(attempts_made, policy.backoff, jitter)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    remaining = policy.budget - elapsed
    if delay >= remaining:
        return RetryDecision(False, why_not=f"the retry budget of {policy.budget:g} s would be exceeded")
    return RetryDecision(True, delay)


_ERROR_TEXT_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """An OpenAI-style error object, with what a gateway wraps in it. OpenRouter sends
    `{error: {code, message, metadata}}`, the provider's own error as a string in
    `metadata.raw` and its name in `metadata.provider_name` (openrouter.ai/docs/api-reference/errors;
    OpenRouterTeam/ai-sdk-provider src/schemas/error-response.ts, which reads both)."""

    message: str | None
    code: int | None  # `error.code` when a number: OpenRouter's is the HTTP status it means
    raw: str | None
    provider: str | None

    @classmethod
    def read(cls, error: Any) -> UpstreamError | None:
        if isinstance(error, str):
            return cls(error, None, None, None)
        if not isinstance(error, dict):
            return None
        metadata = error.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        code = error.get("code")
        return cls(
            error.get("message") if isinstance(error.get("message"), str) else None,
            code if type(code) is int else None,
            metadata.get("raw") if isinstance(metadata.get("raw"), str) else None,
            metadata.get("provider_name") if isinstance(metadata.get("provider_name"), str) else None,
        )

    @classmethod
    def parse(cls, body: bytes) -> UpstreamError | None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return cls.read(parsed.get("error")) if isinstance(parsed, dict) else None

    def text(self) -> str:
        """The message, with the provider's own words when a gateway wrapped them."""
        parts = [self.message or ""]
        if self.provider:
            parts.append(f"[{self.provider}]")
        if self.raw and self.raw != self.message:
            parts.append(self.raw)
        return " ".join(p for p in parts if p)[:_ERROR_TEXT_LIMIT]

    @property
    def retryable(self) -> bool:
        return self.code in RETRY_STATUSES


def in_band_error(body: bytes) -> UpstreamError | None:
    """An error a `200 OK` JSON body carries instead of an answer: OpenRouter reports an error met
    after the model began as HTTP 200 with the error object in the body (openrouter.ai/docs/
    api-reference/errors; ai-sdk-provider src/chat/schemas.ts "HTTP 200 with error payload"), at
    the top or in a choice finished with `error`. None for an answer."""
    if b'"error"' not in body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    choices = parsed.get("choices")
    if "error" in parsed and not choices:
        return UpstreamError.read(parsed["error"])
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("finish_reason") == "error" and "error" in choice:
            message = choice.get("message")
            answered = isinstance(message, dict) and (message.get("content") or message.get("tool_calls"))
            return None if answered else UpstreamError.read(choice["error"])
    return None
