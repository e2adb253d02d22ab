"""One flow's record, `flow.metadata["kimiwire"]`, with every write the adapter makes to it.

The stored record stays a plain dict, because tests, captures (mitm/capture.py), the replay script
and the content view read it as one; `FlowRecord` wraps that dict so that what the adapter writes
has one place and a type: the request side's facts and policy, repairs, notes, errors and flags,
the ending (mitm/flow_endings.py), the error answer's status, what the client was delivered, the
stream's figures and timings, the retry's attempts, and the early head and hedge marks.

Keys (all optional but the three lists): `repairs`, `errors`, `notes` (lists); `limits`, `policy`,
`detection`, `facts` (the request's, as dicts); `flags` (list); `ending` (str); `error_answer`
(int); `delivered`, `upstream_request` (bytes); `error_event` (bytes); `stream` (figures);
`upstream_content_encoding` (str); `timings` (dict); `attempts` (list of attempt dicts);
`retry_gave_up`, `fallback` (str); `early_head` (True); `hedge` (an attempt dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from kimiwire.mitm.flow_endings import FlowEnding, kind_of

METADATA_KEY = "kimiwire"


def flow_record(flow: http.HTTPFlow) -> dict[str, Any]:
    """The kimiwire entry in `flow.metadata` (created on first use)."""
    record = flow.metadata.get(METADATA_KEY)
    if not isinstance(record, dict):
        record = flow.metadata[METADATA_KEY] = {"repairs": [], "errors": [], "notes": []}
    return record


@dataclass(eq=False, slots=True)
class FlowRecord:
    data: dict[str, Any]  # the dict in flow.metadata (what readers see)

    @classmethod
    def of(cls, flow: http.HTTPFlow) -> FlowRecord:
        return cls(flow_record(flow))

    # -- reads -----------------------------------------------------------------------------

    @property
    def ending(self) -> str | None:
        ending = self.data.get("ending")
        return ending if isinstance(ending, str) else None

    def ended(self, *endings: FlowEnding) -> bool:
        """The flow's ending (its name, the detail dropped) is one of `endings`."""
        return kind_of(self.data.get("ending")) in endings

    @property
    def is_chat(self) -> bool:
        """The request side started this flow as a chat flow (it wrote the policy)."""
        return "policy" in self.data

    @property
    def attempted(self) -> bool:
        """A retry's attempts are recorded."""
        return "attempts" in self.data

    @property
    def attempts_made(self) -> int:
        return len(self.data.get("attempts") or [1])

    @property
    def repairs(self) -> list[dict[str, Any]]:
        repairs: list[dict[str, Any]] = self.data["repairs"]
        return repairs

    @property
    def flags(self) -> list[str]:
        flags: list[str] = self.data.get("flags", [])
        return flags

    @property
    def answered_with(self) -> int | None:
        """The status of the error answer set for the client, if any."""
        status = self.data.get("error_answer")
        return status if isinstance(status, int) else None

    @property
    def delivered(self) -> bytes | None:
        delivered = self.data.get("delivered")
        return bytes(delivered) if isinstance(delivered, bytes | bytearray) else None

    # -- writes ----------------------------------------------------------------------------

    def start_chat(self, limits: dict[str, Any], policy: dict[str, Any], detection: Any, facts: dict[str, Any]) -> None:
        self.data["limits"] = limits
        self.data["policy"] = policy
        if detection is not None:
            self.data["detection"] = detection
        self.data["facts"] = facts

    def set_facts(self, facts: dict[str, Any]) -> None:
        self.data["facts"] = facts

    def set_ending(self, how: str) -> bool:
        """Record how the flow ended; the first word counts. True when this call set it."""
        if "ending" in self.data:
            return False
        self.data["ending"] = how
        return True

    def replace_ending(self, how: str) -> str | None:
        """A retry decides how the flow ended after all: `how` in place of any earlier ending."""
        old = self.ending
        self.data["ending"] = how
        return old

    def settle_ending(self, natural: bool) -> str:
        """The ending kimi.stats counts: the recorded one, else natural (or error)."""
        ending: str = self.data.setdefault("ending", FlowEnding.NATURAL if natural else FlowEnding.ERROR)
        return ending

    def add_repairs(self, entries: list[dict[str, Any]]) -> None:
        self.data["repairs"].extend(entries)

    def add_error(self, text: str) -> None:
        self.data["errors"].append(text)

    def add_note(self, text: str) -> None:
        self.data["notes"].append(text)

    def add_flag(self, flag: str) -> None:
        self.data.setdefault("flags", []).append(flag)

    def set_error_answer(self, status: int) -> None:
        self.data["error_answer"] = status

    def set_delivered(self, body: bytes) -> None:
        self.data["delivered"] = body

    def forget_delivered(self) -> None:
        """What the client got is the flow's response body: kept once (`delivered_body` reads it back)."""
        self.data.pop("delivered", None)

    def set_error_event(self, event: bytes) -> None:
        self.data["error_event"] = event

    def set_stream(self, events_in: int, upstream_bytes: int, delivered_bytes: int, passthrough: bool) -> None:
        self.data["stream"] = {
            "events_in": events_in,
            "upstream_bytes": upstream_bytes,
            "delivered_bytes": delivered_bytes,
            "passthrough": passthrough,
        }

    def set_upstream_request(self, body: bytes) -> None:
        self.data["upstream_request"] = body

    def keep_upstream_request(self, body: bytes) -> None:
        """The request as it went upstream, unless a repair recorded it already."""
        self.data.setdefault("upstream_request", body)

    def set_upstream_content_encoding(self, encoding: str) -> None:
        self.data["upstream_content_encoding"] = encoding

    def set_timings(self, request: float, first_byte: float | None, last_byte: float | None) -> None:
        self.data["timings"] = {"request": request, "first_byte": first_byte, "last_byte": last_byte}

    def first_attempt(self, attempt: dict[str, Any]) -> None:
        self.data["attempts"] = [attempt]

    def attempts(self) -> list[dict[str, Any]]:
        """The retry's attempts (the loop appends and updates them in place)."""
        attempts: list[dict[str, Any]] = self.data.setdefault("attempts", [])
        return attempts

    def retry_gave_up(self, why: str | None) -> None:
        self.data["retry_gave_up"] = why

    def set_fallback(self, name: str) -> None:
        self.data["fallback"] = name

    def add_answer_repairs(self, entries: list[dict[str, Any]], attempt: int) -> None:
        """The answering attempt's repairs become the flow's."""
        repairs = self.data.setdefault("repairs", [])
        repairs.extend({**entry, "phase": "response", "attempt": attempt} for entry in entries)

    def early_head_sent(self) -> None:
        self.data["early_head"] = True

    def set_hedge(self, attempt: dict[str, Any]) -> None:
        """The hedged attempt, when it was not adopted by a retry (that one is in `attempts`)."""
        self.data.setdefault("hedge", attempt)
