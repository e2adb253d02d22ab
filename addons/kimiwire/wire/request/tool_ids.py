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


def history_tool_calls(messages: list[Any]) -> tuple[int, list[str]]:
    """The number of tool calls in the history (the first index a new response continues from)
    and the tools its assistant messages called, each once, in order; one pass."""
    count = 0
    names: dict[str, None] = {}
    for message in messages:
        if type(message) is dict and message.get("role") == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is list:
                count += len(calls)
                for call in calls:
                    function = call.get("function") if type(call) is dict else None
                    name = function.get("name") if type(function) is dict else None
                    if type(name) is str and name:
                        names[name] = None
    return count, list(names)


def count_history_tool_calls(messages: list[Any]) -> int:
    """The number of tool calls in the history: the first index a new response continues from."""
    return history_tool_calls(messages)[0]


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
    first_open = None
    for call in block:  # exact id, first unanswered occurrence first
        if not call.answered:
            if call.old_id == answer_id:
                return call, "exact"
            if first_open is None:
                first_open = call
    if first_open is None:
        return None, "orphan"
    for call in block:
        if not call.answered and _same_after_mangling(call.old_id, answer_id):
            return call, "mangled"
    if position < len(block) and not block[position].answered:
        return block[position], "position"
    return first_open, "position"


def canonicalize_tool_ids(messages: list[Any], log: RepairLog) -> None:
    """Rewrite assistant tool-call ids and `tool_call_id`s in place, recording each change."""
    k = 0
    block: list[_PendingCall] | None = None
    position = 0
    add = log.add
    for index, message in enumerate(messages):
        if type(message) is not dict:
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is not list or not calls:
                block = None
                continue
            block, position = [], 0
            for call in calls:
                if type(call) is not dict:
                    raise UnrepairableShape(f"tool call that is not an object in message {index}")
                new_id = f"functions.{tool_call_name(call, index)}:{k}"
                k += 1
                old_id = call.get("id")
                if old_id != new_id:
                    call["id"] = new_id
                    add("ids.call", index, old_id, new_id)
                block.append(_PendingCall(old_id, new_id))
        elif role == "tool":
            answer_id = message.get("tool_call_id")
            call, how = _resolve(block or [], answer_id, position)
            position += 1
            if call is None:
                add("ids.orphan", index, answer_id, answer_id)
                continue
            call.answered = True
            if answer_id != call.new_id:
                message["tool_call_id"] = call.new_id
                add("ids.result_by_position" if how == "position" else "ids.result", index, answer_id, call.new_id)
