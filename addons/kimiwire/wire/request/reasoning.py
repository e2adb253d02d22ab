"""Reasoning replayed in a request's history, kept or stripped the way the model expects.

The Kimi-K2-Thinking / K2.5 templates render reasoning only for assistant messages after the
last assistant message without tool calls (the current tool loop), and read only the key
`reasoning_content`. Harnesses replay whatever key the server streamed, on every message.
"""

from __future__ import annotations

from typing import Any

from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.repairs import RepairLog

# Moonshot rejects a tool-call turn in the current loop whose reasoning is missing or empty
# with HTTP 400 when thinking is on; a single space is accepted.
MOONSHOT_REASONING_PLACEHOLDER = " "


def current_loop_start(messages: list[Any]) -> int:
    """Index of the first message after the last assistant message without tool calls."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "assistant" and not message.get("tool_calls"):
            return index + 1
    return 0


def _strip(message: dict[str, Any], index: int, log: RepairLog) -> None:
    for key in REASONING_KEYS:
        if key in message:
            value = message.pop(key)
            log.add("reasoning.stripped", index, {key: value}, None)


def _keep_as_reasoning_content(message: dict[str, Any], index: int, log: RepairLog) -> None:
    kept = message.get("reasoning_content")
    for key in REASONING_KEYS[1:]:
        if key not in message:
            continue
        value = message.pop(key)
        if (not isinstance(kept, str) or not kept) and isinstance(value, str) and value:
            message["reasoning_content"] = kept = value
            log.add("reasoning.renamed", index, key, "reasoning_content")
        else:
            log.add("reasoning.stripped", index, {key: value}, None)


def apply_reasoning_policy(
    messages: list[Any], mode: str, log: RepairLog, placeholder_for_tool_calls: bool = False
) -> None:
    """mode: `strip` | `loop` | `keep`. `placeholder_for_tool_calls` fills missing reasoning on
    tool-call messages of the current loop (Moonshot with thinking on)."""
    if mode == "keep":
        return
    loop_start = current_loop_start(messages) if mode == "loop" else len(messages)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        if index < loop_start:
            _strip(message, index, log)
            continue
        _keep_as_reasoning_content(message, index, log)
        if placeholder_for_tool_calls and message.get("tool_calls"):
            value = message.get("reasoning_content")
            if not isinstance(value, str) or not value:
                message["reasoning_content"] = MOONSHOT_REASONING_PLACEHOLDER
                log.add("reasoning.placeholder", index, value, MOONSHOT_REASONING_PLACEHOLDER)
