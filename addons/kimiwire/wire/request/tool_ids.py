"""Tool-call ids in a request's history, made canonical: `functions.{name}:{k}`.

k counts every tool call of every assistant message in order, from 0, over the whole
conversation: the numbering the Kimi chat templates, SGLang, vLLM and Moonshot's own API use.
Each `tool` message is re-pointed at the call it answers. Stateless on purpose: any number of
proxy instances give the same answer for the same request.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from kimiwire.wire.repairs import RepairLog

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
_TRUNCATED_ID_LENGTH = 40  # OpenClaw and pi-ai cut ids to 40 characters


class UnrepairableShape(ValueError):
    """The messages cannot be repaired safely; the request must be forwarded unchanged."""


def canonical_id(name: str, k: int) -> str:
    return f"functions.{name}:{k}"


_ID_INDEX = re.compile(r":(\d{1,7})")  # the `:N` of `functions.read:N`, `read:N`, `functions.read:N:M`


def _highest_index(call_ids: list[str]) -> int:
    """The highest `:N` in any of `call_ids`, -1 when none has one. One regex pass over the ids joined
    by a newline, which is neither a colon nor a digit: no match starts in it or runs across it, so
    the matches are those of each id in turn."""
    return max(map(int, _ID_INDEX.findall("\n".join(call_ids))), default=-1)


def history_tool_calls(messages: list[Any]) -> tuple[int, list[str]]:
    """The first index a new response continues from, and the tools the history's assistant
    messages called, each once, in order; one pass. The index is the number of calls in the
    history, or the highest `:N` of an id in the request + 1 when that is larger: a client that
    trimmed or compacted its history still holds the ids it was given, and a repeated id froze
    agents and got 400s (sgl-project/sglang PR #33343, openclaw/openclaw PR #51155)."""
    count = 0
    call_ids: list[str] = []
    names: dict[str, None] = {}
    for message in messages:
        if type(message) is not dict:
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is list:
                count += len(calls)
                for call in calls:
                    if type(call) is not dict:
                        continue
                    call_id = call.get("id")
                    if type(call_id) is str:
                        call_ids.append(call_id)
                    function = call.get("function")
                    name = function.get("name") if type(function) is dict else None
                    if type(name) is str and name:
                        names[name] = None
        elif role == "tool":
            answer_id = message.get("tool_call_id")
            if type(answer_id) is str:
                call_ids.append(answer_id)
    return max(count, _highest_index(call_ids) + 1), list(names)


def count_history_tool_calls(messages: list[Any]) -> int:
    """The first index a new response continues from (`history_tool_calls`)."""
    return history_tool_calls(messages)[0]


def tool_call_name(call: Any, message_index: int) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise UnrepairableShape(f"tool call without a function name in message {message_index}")
    return name


def _sanitized(tool_id: str) -> str:
    return _NON_ALNUM.sub("", tool_id)


class _Block:
    """The calls of one assistant message, answered by the tool messages after it (parallel
    lists: a long history has hundreds of calls, and an object per call showed in the profile)."""

    __slots__ = ("answered", "new_ids", "old_ids")

    def __init__(self) -> None:
        self.old_ids: list[Any] = []
        self.new_ids: list[str] = []
        self.answered: list[bool] = []


_NO_CALLS = _Block()


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


Resolution = Literal["exact", "orphan", "mangled", "position"]  # how a tool message was matched to its call


def _resolve(block: _Block, answer_id: Any, position: int) -> tuple[int | None, Resolution]:
    """Which call of the block (its position) a tool message answers, and how that was decided."""
    answered = block.answered
    first_open = None
    for i, old_id in enumerate(block.old_ids):  # exact id, first unanswered occurrence first
        if not answered[i]:
            if old_id == answer_id:
                return i, "exact"
            if first_open is None:
                first_open = i
    if first_open is None:
        return None, "orphan"
    for i, old_id in enumerate(block.old_ids):
        if not answered[i] and _same_after_mangling(old_id, answer_id):
            return i, "mangled"
    if position < len(answered) and not answered[position]:
        return position, "position"
    return first_open, "position"


def canonicalize_tool_ids(messages: list[Any], log: RepairLog) -> None:
    """Rewrite assistant tool-call ids and `tool_call_id`s in place, recording each change."""
    k = 0
    # The open block's calls (parallel lists, in locals: a `_Block` is built only for `_resolve`'s
    # slow rules); empty when no tool-call message is open.
    old_ids: list[Any] = []
    new_ids: list[str] = []
    answered: list[bool] = []
    position = 0
    add = log.add
    for index, message in enumerate(messages):
        if type(message) is not dict:
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is not list or not calls:
                if old_ids:
                    old_ids, new_ids, answered = [], [], []
                continue
            old_ids, new_ids, position = [], [], 0
            for call in calls:
                if type(call) is not dict:
                    raise UnrepairableShape(f"tool call that is not an object in message {index}")
                function = call.get("function")
                name = function.get("name") if type(function) is dict else None
                if type(name) is not str or not name:
                    name = tool_call_name(call, index)  # raises, or reads a str subclass
                new_id = f"functions.{name}:{k}"
                k += 1
                old_id = call.get("id")
                if old_id != new_id:
                    call["id"] = new_id
                    add("ids.call", index, old_id, new_id)
                old_ids.append(old_id)
                new_ids.append(new_id)
            answered = [False] * len(calls)
        elif role == "tool":
            answer_id = message.get("tool_call_id")
            found: int | None = None
            how: Resolution = "exact"
            # `_resolve`'s first rule (the first open call with this very id) at C speed, for a string
            # id (`list.index` also matches by identity, which `==` does not for a NaN)
            if type(answer_id) is str:
                try:
                    first = old_ids.index(answer_id)
                except ValueError:
                    pass
                else:
                    if not answered[first]:
                        found = first
            if found is None:
                block = _Block()
                block.old_ids, block.new_ids, block.answered = old_ids, new_ids, answered
                found, how = _resolve(block, answer_id, position)
            position += 1
            if found is None:
                add("ids.orphan", index, answer_id, answer_id)
                continue
            answered[found] = True
            new_id = new_ids[found]
            if answer_id != new_id:
                message["tool_call_id"] = new_id
                add("ids.result_by_position" if how == "position" else "ids.result", index, answer_id, new_id)
