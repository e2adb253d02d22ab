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
    # Tools the history's assistant messages called, in first-call order: they count as known
    # when the request declares no tools (pi-ai sends `tools: []` after tool history).
    history_tool_names: list[str] = field(default_factory=list)
    # The request goes to a K2.5/K2.6 model with thinking on: its chat template prefills `<think>`,
    # so the output starts inside reasoning (smg-project/smg#1873).
    thinking_prefilled: bool = False
    # Tool names the upstream refuses were sent renamed: upstream name -> the client's name.
    tool_renames: dict[str, str] = field(default_factory=dict)
    # The client forced a tool (`tool_choice` required: "*", or the tool's name) that the upstream
    # was sent as `auto` (it refuses forcing while thinking): the turn is judged on calling it.
    forced_tool: str | None = None
    # The request goes to a Kimi K3 model: its markup (k3_markup.py) and an answer that may come
    # in the reasoning field (sgl-project/sglang PR #33995).
    k3_model: bool = False

    @property
    def known_tool_names(self) -> frozenset[str]:
        """Names a leaked call may use: the declared tools, else the tools the history called (and
        the names they were sent upstream under, when renamed)."""
        known = frozenset(self.tools) if self.tools else frozenset(self.history_tool_names)
        return known | frozenset(self.tool_renames) if self.tool_renames else known

    def as_dict(self) -> dict[str, Any]:
        return {
            "history_tool_calls": self.history_tool_calls,
            "tools": self.tools,
            "tools_declared": self.tools_declared,
            "stream": self.stream,
            "history_tool_names": self.history_tool_names,
            "thinking_prefilled": self.thinking_prefilled,
            "tool_renames": self.tool_renames,
            "forced_tool": self.forced_tool,
            "k3_model": self.k3_model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestFacts:
        return cls(
            int(data.get("history_tool_calls", 0)),
            dict(data.get("tools") or {}),
            bool(data.get("tools_declared")),
            bool(data.get("stream")),
            [str(n) for n in data.get("history_tool_names") or []],
            bool(data.get("thinking_prefilled")),
            {str(k): str(v) for k, v in (data.get("tool_renames") or {}).items()},
            data.get("forced_tool") if isinstance(data.get("forced_tool"), str) else None,
            bool(data.get("k3_model")),
        )
