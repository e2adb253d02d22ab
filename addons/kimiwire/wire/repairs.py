"""The record of what a repair changed: one entry per change, kept on the flow."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Repair:
    kind: str
    message_index: int | None
    before: Any
    after: Any

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message_index": self.message_index, "before": self.before, "after": self.after}


_new = object.__new__


@dataclass
class RepairLog:
    """An append-only list of repairs with counts by kind."""

    entries: list[Repair] = field(default_factory=list)

    def add(self, kind: str, message_index: int | None = None, before: Any = None, after: Any = None) -> None:
        # Skips the dataclass __init__: a long history records hundreds of repairs per request.
        repair = _new(Repair)
        repair.kind = kind  # one store each: a tuple assignment builds and unpacks a tuple per record
        repair.message_index = message_index
        repair.before = before
        repair.after = after
        self.entries.append(repair)

    def extend(self, other: RepairLog) -> None:
        self.entries.extend(other.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def kinds(self) -> list[str]:
        return [r.kind for r in self.entries]

    def counts(self) -> Counter[str]:
        return Counter(r.kind for r in self.entries)

    def summary(self) -> str:
        """One line, `kind=count` sorted by kind, e.g. `ids.rewritten=3 reasoning.stripped=1`."""
        return " ".join(f"{k}={n}" for k, n in sorted(self.counts().items()))

    def as_list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.entries]
