"""What one read of the stream repairer hands the turn gate (sans-IO), so the gate judges the read
without parsing the repairer's own output again: `StreamRepairer.feed_handing_over` returns it
with the read's output, `TurnGate.take` consumes it.

A read the fast path took hands over the texts of its events (`plain`); a read the full path took,
every event it emitted from a parsed or built chunk (`chunks`, under the event's id(), the bytes
kept so the id stays theirs). Events in neither (comments, raw passthrough) the gate parses itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kimiwire.wire.response.fast_path import PlainText


@dataclass(slots=True)
class Handover:
    plain: list[PlainText] = field(default_factory=list)
    chunks: dict[int, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)

    def add_chunk(self, event: bytes, chunk: dict[str, Any]) -> None:
        """`event` went out as `chunk` encodes (or as the upstream sent it, `chunk` parsed from it)."""
        self.chunks[id(event)] = (event, chunk)

    def chunk_of(self, event: bytes) -> dict[str, Any] | None:
        """The chunk `event` was made from or parsed into, when it is one this read handed over."""
        handed = self.chunks.get(id(event))
        return handed[1] if handed is not None and handed[0] is event else None
