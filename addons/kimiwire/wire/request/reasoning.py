"""Reasoning replayed in a request's history, kept or stripped the way the model expects.

The Kimi-K2-Thinking / K2.5 templates render reasoning only for assistant messages after the
last assistant message without tool calls (the current tool loop), and read only the key
`reasoning_content`; vLLM fills that from the request's `reasoning` key alone. Harnesses replay
whatever key the server streamed, on every message.
"""

from __future__ import annotations

from typing import Any

from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.servers.policy import Reasoning

# Moonshot rejects a request with a tool-call turn (in any loop of the history) whose reasoning is
# missing or empty with HTTP 400 when thinking is on; a single space is accepted (kimi-agent-sdk#169,
# earendil-works/pi#5633, PR #4178).
MOONSHOT_REASONING_PLACEHOLDER = " "


def current_loop_start(messages: list[Any]) -> int:
    """Index of the first message after the last assistant message without tool calls."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "assistant" and not message.get("tool_calls"):
            return index + 1
    return 0


def _keep_under(key: str, message: dict[str, Any], index: int, log: RepairLog) -> None:
    kept = message.get(key)
    for other in REASONING_KEYS:
        if other == key or other not in message:
            continue
        value = message.pop(other)
        if (not isinstance(kept, str) or not kept) and isinstance(value, str) and value:
            message[key] = kept = value
            log.add("reasoning.renamed", index, other, key)
        else:
            log.add("reasoning.stripped", index, {other: value}, None)


def apply_reasoning_policy(
    messages: list[Any],
    mode: Reasoning,
    log: RepairLog,
    placeholder_for_tool_calls: bool = False,
    key: str = REASONING_KEYS[0],
) -> None:
    """mode: `strip` | `loop` | `keep`. Kept reasoning goes under `key`, the one the server reads
    (`keep` leaves the history as sent unless that is not `reasoning_content`).
    `placeholder_for_tool_calls` (Moonshot with thinking on): every tool-call message, in every
    loop of the history, keeps its own reasoning or gets a placeholder; Moonshot checks them all."""
    if mode == "keep" and key == REASONING_KEYS[0] and not placeholder_for_tool_calls:
        return
    loop_start = current_loop_start(messages) if mode == "loop" else 0 if mode == "keep" else len(messages)
    others = tuple(other for other in REASONING_KEYS if other != key)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        placeholder = placeholder_for_tool_calls and message.get("tool_calls")
        if index < loop_start and not placeholder:
            for reasoning_key in REASONING_KEYS:  # before the current loop: every key stripped
                if reasoning_key in message:
                    log.add("reasoning.stripped", index, {reasoning_key: message.pop(reasoning_key)}, None)
            continue
        if not message.keys().isdisjoint(others):  # (reasoning under the key alone stays as it is)
            _keep_under(key, message, index, log)
        if placeholder:
            value = message.get(key)
            if not isinstance(value, str) or not value:
                message[key] = MOONSHOT_REASONING_PLACEHOLDER
                log.add("reasoning.placeholder", index, value, MOONSHOT_REASONING_PLACEHOLDER)
