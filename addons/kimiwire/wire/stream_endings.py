"""When a stream must be ended by the proxy, and why (pure: times in, a deadline out).

- `done`: the client has been sent `data: [DONE]`; its body ends after `done_grace` even if the
  upstream keeps its body open (the OpenAI SDKs read until the body ends, not until [DONE]).
- `finished`: every choice has its `finish_reason` and the upstream went quiet for
  `done_grace`: the client gets what is held, the finish chunk and [DONE].
- `idle`: no upstream event for `idle_timeout` (comments and keepalives do not count): the
  client gets what is held, an OpenAI-style error event and [DONE]. While a tool call may be
  under way unseen (`StreamRepairer.tool_section_open`: servers hold a call until it is
  complete), the wait is `tool_idle_timeout`.
- `first_event`: no event yet, `first_event_timeout` after the request (its time to first
  token: response headers often come at once, the first event after the prefill, which takes long
  on long contexts, so this wait is longer than the idle one). It ends like `idle`.
- `keepalive` (not an ending): while the client has been sent no answer yet, or a tool call may be
  under way unseen, an SSE comment every `keepalive` seconds of upstream silence, so client
  watchdogs that count bytes stay quiet.

The defaults, and why (the worst cases are worked out in docs/endings.md, "Timeouts"): response
headers in 60 s (SGLang and vLLM send them before the prefill; a gateway may queue first); the
first event in 90 s from the request, its time to first token (prefill grows with the context: a
32K-token prompt takes ~1 s on H100/H200 for a 70B model, tenstorrent/tt-inference-server#406; a
128K-token one 73-88 s on 8 L40S, yhfgyyf/vllm-deepseek-v4-sm89#62; a busy server adds its
queue); 60 s between later events (vLLM's K3 parser holds a long call silently, ~32 s for 17.5K
characters, vllm PR #50627), 600 s while a tool call may be under way unseen (the same parser
holds the whole call); a comment every 10 s while the client waits (byte-counting client
timeouts such as undici's 300 s bodyTimeout stay far off). `scaled` multiplies every one of them,
so tests run the defaults' ratios in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

KEEPALIVE_COMMENT = b": kimiwire waiting for upstream\n\n"


@dataclass(frozen=True, slots=True)
class EndingLimits:
    done_grace: float = 1.0
    idle_timeout: float = 60.0  # 0: never
    first_byte_timeout: float = 60.0  # response headers, from the request; 0: never
    first_event_timeout: float = 90.0  # the first event, from the request; 0: never
    tool_idle_timeout: float = 600.0  # the idle wait while a tool call may be under way unseen; 0: never
    keepalive: float = 10.0  # 0: no comments

    def scaled(self, factor: float) -> EndingLimits:
        """Every limit times `factor`: the defaults' ratios at another speed."""
        if factor == 1.0:
            return self
        return replace(
            self,
            done_grace=self.done_grace * factor,
            idle_timeout=self.idle_timeout * factor,
            first_byte_timeout=self.first_byte_timeout * factor,
            first_event_timeout=self.first_event_timeout * factor,
            tool_idle_timeout=self.tool_idle_timeout * factor,
            keepalive=self.keepalive * factor,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "done_grace": self.done_grace,
            "idle_timeout": self.idle_timeout,
            "first_byte_timeout": self.first_byte_timeout,
            "first_event_timeout": self.first_event_timeout,
            "tool_idle_timeout": self.tool_idle_timeout,
            "keepalive": self.keepalive,
        }


@dataclass(slots=True)
class StreamTimes:
    started_at: float
    last_event_at: float
    done_at: float | None = None
    finished_at: float | None = None
    events_seen: bool = False
    tool_section_open: bool = False  # after the last read: a tool call may be under way unseen
    keepalive_at: float | None = None  # the last comment sent to the client while it waited


# The deadlines `next_deadline` decides; mitm/stream_callable.ProxyEnd names each one's ending.
Deadline = Literal["done", "finished", "first_event", "idle"]


def next_deadline(times: StreamTimes, limits: EndingLimits) -> tuple[float, Deadline] | None:
    """(monotonic time, reason) at which the stream must end, or None for never."""
    if times.done_at is not None:
        return times.done_at + limits.done_grace, "done"
    if times.finished_at is not None:
        return max(times.finished_at, times.last_event_at) + limits.done_grace, "finished"
    if not times.events_seen and limits.first_event_timeout > 0:
        return times.started_at + limits.first_event_timeout, "first_event"
    idle = limits.tool_idle_timeout if times.tool_section_open else limits.idle_timeout
    if idle > 0:
        return times.last_event_at + idle, "idle"
    return None


def next_keepalive(times: StreamTimes, limits: EndingLimits, waiting: bool) -> float | None:
    """When the next comment is due, or None: while the client is `waiting` for an answer, or a
    tool call may be under way upstream unseen."""
    if (
        not (waiting or times.tool_section_open)
        or limits.keepalive <= 0
        or times.done_at is not None
        or times.finished_at is not None
    ):
        return None
    last = max(times.last_event_at, times.keepalive_at or times.started_at)
    return last + limits.keepalive


def parse_seconds(value: str, name: str) -> float:
    """Option values are strings (mitmproxy options cannot be floats)."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds (got {value!r})") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{name} must be 0 or more seconds (got {value!r})")
    return seconds
