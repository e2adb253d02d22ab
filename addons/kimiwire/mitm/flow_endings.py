"""How a flow ended, as its record names it (`ending`) and kimi.stats counts it (`ending.<name>`).

The record keeps a string (captures, scripts and tests read it): the ending's name, and for some a
detail after a colon (`retries_exhausted:status`, `closed:why`). Code names endings with
`FlowEnding`; `kind_of` reads the name back from a record's string.
"""

from __future__ import annotations

from enum import StrEnum


class FlowEnding(StrEnum):
    NATURAL = "natural"  # nothing ended the flow early
    ERROR = "error"  # the flow failed and nothing else named its ending
    IDLE_TIMEOUT = "idle_timeout"
    FIRST_EVENT_TIMEOUT = "first_event_timeout"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    PROXY_DONE = "proxy_done"
    PROXY_FINISHED = "proxy_finished"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_ERROR_MID_STREAM = "upstream_error_mid_stream"
    CLIENT_DISCONNECTED = "client_disconnected"
    CLIENT_ERROR = "client_error"
    CLOSED = "closed"  # a proxy ending fell back to closing the connections
    REQUEST_TOO_LARGE = "request_too_large"
    REQUEST_REFUSED = "request_refused"
    SHUTDOWN = "shutdown"
    RETRIED = "retried"
    RETRIES_EXHAUSTED = "retries_exhausted"

    def detailed(self, detail: str) -> str:
        """The record's string for this ending with a detail (`retries_exhausted:stall`)."""
        return f"{self.value}:{detail}"


# Endings where the proxy cut the flow short (or answered it itself); the others are clean ends.
CUT_SHORT = frozenset(
    {
        FlowEnding.IDLE_TIMEOUT,
        FlowEnding.FIRST_EVENT_TIMEOUT,
        FlowEnding.FIRST_BYTE_TIMEOUT,
        FlowEnding.UPSTREAM_ERROR,
        FlowEnding.UPSTREAM_ERROR_MID_STREAM,
        FlowEnding.CLIENT_DISCONNECTED,
        FlowEnding.CLOSED,
        FlowEnding.REQUEST_TOO_LARGE,
        FlowEnding.REQUEST_REFUSED,
        FlowEnding.SHUTDOWN,
    }
)
RETRY_ENDINGS = frozenset({FlowEnding.RETRIED, FlowEnding.RETRIES_EXHAUSTED})


def kind_of(ending: object) -> str:
    """The ending's name in a record's string (its detail dropped); "" when there is none."""
    return str(ending).split(":", 1)[0] if ending else ""
