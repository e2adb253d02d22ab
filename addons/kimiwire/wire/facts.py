"""What the response side needs to know about the request it answers (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestFacts:
    """What the response repair needs to know about the request it answers."""

    history_tool_calls: int = 0
    tools: dict[str, Any] = field(default_factory=dict)  # declared name -> parameters schema
    tools_declared: bool = False
    stream: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "history_tool_calls": self.history_tool_calls,
            "tools": self.tools,
            "tools_declared": self.tools_declared,
            "stream": self.stream,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestFacts:
        return cls(
            int(data.get("history_tool_calls", 0)),
            dict(data.get("tools") or {}),
            bool(data.get("tools_declared")),
            bool(data.get("stream")),
        )
