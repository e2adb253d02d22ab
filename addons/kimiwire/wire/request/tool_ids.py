"""Tool-call ids in a request's history, made canonical: `functions.{name}:{k}`.

k counts every tool call of every assistant message in order, from 0, over the whole
conversation: the numbering the Kimi chat templates, SGLang, vLLM and Moonshot's own API use.
Each `tool` message is re-pointed at the call it answers. Stateless on purpose: any number of
proxy instances give the same answer for the same request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kimiwire.wire.repairs import RepairLog

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
_TRUNCATED_ID_LENGTH = 40  # OpenClaw and pi-ai cut ids to 40 characters


class UnrepairableShape(ValueError):
    """The messages cannot be repaired safely; the request must be forwarded unchanged."""


def canonical_id(name: str, k: int) -> str:
    return f"functions.{name}:{k}"


def _is_tool_call_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") == "assistant"
        and isinstance(message.get("tool_calls"), list)
        and bool(message["tool_calls"])
    )


def count_history_tool_calls(messages: list[Any]) -> int:
    """The number of tool calls in the history: the first index a new response continues from."""
    count = 0
    for message in messages:
        if type(message) is dict and message.get("role") == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is list:
                count += len(calls)
    return count


def tool_call_name(call: Any, message_index: int) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise UnrepairableShape(f"tool call without a function name in message {message_index}")
    return name


def _sanitized(tool_id: str) -> str:
    return _NON_ALNUM.sub("", tool_id)


@dataclass(slots=True)
class _PendingCall:
    old_id: Any
    new_id: str
    answered: bool = False


def _same_after_mangling(old: Any, answer: Any) -> bool:
    """True when two ids differ only by what harnesses do to them: characters stripped, cut short."""
    if not isinstance(old, str) or not isinstance(answer, str):
        return False
    a, b = _sanitized(old), _sanitized(answer)
    if not a or not b:
        return False
    if a == b:
        return True
    shorter, longer = sorted((a, b), key=len)
    return len(shorter) >= _TRUNCATED_ID_LENGTH - 8 and longer.startswith(shorter)


def _resolve(block: list[_PendingCall], answer_id: Any, position: int) -> tuple[_PendingCall | None, str]:
    """Which call of the block a tool message answers, and how that was decided."""
    open_calls = [c for c in block if not c.answered]
    if not open_calls:
        return None, "orphan"
    for call in open_calls:  # exact id, first unanswered occurrence first
        if call.old_id == answer_id:
            return call, "exact"
    for call in open_calls:
        if _same_after_mangling(call.old_id, answer_id):
            return call, "mangled"
    if position < len(block) and not block[position].answered:
        return block[position], "position"
    return open_calls[0], "position"


def canonicalize_tool_ids(messages: list[Any], log: RepairLog) -> None:
    """Rewrite assistant tool-call ids and `tool_call_id`s in place, recording each change."""
    k = 0
    block: list[_PendingCall] | None = None
    position = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if _is_tool_call_message(message):
            block, position = [], 0
            for call in message["tool_calls"]:
                if not isinstance(call, dict):
                    raise UnrepairableShape(f"tool call that is not an object in message {index}")
                new_id = canonical_id(tool_call_name(call, index), k)
                k += 1
                old_id = call.get("id")
                if old_id != new_id:
                    call["id"] = new_id
                    log.add("ids.call", index, old_id, new_id)
                block.append(_PendingCall(old_id, new_id))
        elif role == "assistant":
            block = None
        elif role == "tool":
            answer_id = message.get("tool_call_id")
            call, how = _resolve(block or [], answer_id, position)
            position += 1
            if call is None:
                log.add("ids.orphan", index, answer_id, answer_id)
                continue
            call.answered = True
            if answer_id != call.new_id:
                message["tool_call_id"] = call.new_id
                kind = "ids.result_by_position" if how == "position" else "ids.result"
                log.add(kind, index, answer_id, call.new_id)
