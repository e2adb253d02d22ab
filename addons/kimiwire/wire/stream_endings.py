"""When a stream must be ended by the proxy, and why (pure: times in, a deadline out).

- `done`: the client has been sent `data: [DONE]`; its body ends after `done_grace` even if the
  upstream keeps its body open (the OpenAI SDKs read until the body ends, not until [DONE]).
- `finished`: every choice has its `finish_reason` and the upstream went quiet for
  `done_grace`: the client gets what is held, the finish chunk and [DONE].
- `idle`: no upstream event for `idle_timeout` (comments and keepalives do not count): the
  client gets what is held, an OpenAI-style error event and [DONE]. While a tool call may be
  under way unseen (`StreamRepairer.tool_section_open`: servers hold a call until it is
  complete), the wait is `tool_idle_timeout`, and the client gets an SSE comment every
  `tool_keepalive` seconds of upstream silence so its own idle watchdog stays quiet.
- `first_event`: headers came, but no event yet. Servers often send headers at once and the
  first event after prefill, which takes long on long contexts: this wait gets the first-byte
  budget, not the idle one. It ends like `idle`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndingLimits:
    done_grace: float = 1.0
    idle_timeout: float = 120.0  # 0: never
    first_byte_timeout: float = 600.0  # 0: never
    tool_idle_timeout: float = 600.0  # the idle wait while a tool call may be under way; 0: never
    tool_keepalive: float = 5.0  # seconds of silence between comments to the client then; 0: none

    @property
    def first_event_timeout(self) -> float:
        """How long a stream may wait for its first event after the headers."""
        return max(self.first_byte_timeout, self.idle_timeout)

    def as_dict(self) -> dict[str, float]:
        return {
            "done_grace": self.done_grace,
            "idle_timeout": self.idle_timeout,
            "first_byte_timeout": self.first_byte_timeout,
            "tool_idle_timeout": self.tool_idle_timeout,
            "tool_keepalive": self.tool_keepalive,
        }


@dataclass(slots=True)
class StreamTimes:
    started_at: float
    last_event_at: float
    done_at: float | None = None
    finished_at: float | None = None
    events_seen: bool = False
    tool_section_open: bool = False  # after the last read: a tool call may be under way unseen
    keepalive_at: float = 0.0  # the last comment sent to the client while one was


def next_deadline(times: StreamTimes, limits: EndingLimits) -> tuple[float, str] | None:
    """(monotonic time, reason) at which the stream must end, or None for never."""
    if times.done_at is not None:
        return times.done_at + limits.done_grace, "done"
    if times.finished_at is not None:
        return max(times.finished_at, times.last_event_at) + limits.done_grace, "finished"
    if not times.events_seen and limits.first_byte_timeout > 0:
        return times.started_at + limits.first_event_timeout, "first_event"
    idle = limits.tool_idle_timeout if times.tool_section_open else limits.idle_timeout
    if idle > 0:
        return times.last_event_at + idle, "idle"
    return None


def next_keepalive(times: StreamTimes, limits: EndingLimits) -> float | None:
    """When the client is next due an SSE comment (a tool call may be under way upstream and the
    upstream is silent), or None."""
    if (
        not times.tool_section_open
        or limits.tool_keepalive <= 0
        or not times.events_seen
        or times.done_at is not None
        or times.finished_at is not None
    ):
        return None
    return max(times.last_event_at, times.keepalive_at) + limits.tool_keepalive


def parse_seconds(value: str, name: str) -> float:
    """Option values are strings (mitmproxy options cannot be floats)."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds (got {value!r})") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{name} must be 0 or more seconds (got {value!r})")
    return seconds
