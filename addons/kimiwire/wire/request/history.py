"""History hygiene: message shapes that make servers reject the whole request."""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.arguments import fix_history_arguments
from kimiwire.wire.repairs import RepairLog


def repair_history_arguments(messages: list[Any], log: RepairLog) -> None:
    """SGLang rejects a request (HTTP 400) when any historical `function.arguments` is not a
    JSON object string; repair it when that is unambiguous, else replace it by `{}`."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            before = function.get("arguments")
            if type(before) is str and before[:1] == "{":
                try:
                    if type(orjson.loads(before)) is dict:
                        continue  # the usual case: already a JSON object
                except orjson.JSONDecodeError:
                    pass
            fixed = fix_history_arguments(before)
            if fixed.kind is not None:
                function["arguments"] = fixed.text
                log.add(fixed.kind, index, before, fixed.text)


def _is_empty_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and not (part.get("text") or "").strip()


def _content_is_empty(content: Any) -> bool:
    if content is None:
        return True
    if isinstance(content, str):
        return not content.strip()
    if isinstance(content, list):
        return all(_is_empty_text_part(p) for p in content)
    return False


def moonshot_hygiene(messages: list[Any], log: RepairLog) -> list[Any]:
    """Moonshot answers 400 to an empty assistant message without tool calls, and to an empty
    text content part. Returns the new message list (dropped messages are recorded with their
    index in the list the client sent)."""
    kept: list[Any] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            kept.append(message)
            continue
        content = message.get("content")
        if type(content) is str and content and not content[0].isspace():  # text: nothing here applies
            kept.append(message)
            continue
        if message.get("role") == "assistant" and not message.get("tool_calls") and _content_is_empty(content):
            log.add("message.dropped_empty", index, message, None)
            continue
        if isinstance(content, list) and any(map(_is_empty_text_part, content)):
            parts = [p for p in content if not _is_empty_text_part(p)]
            message["content"] = parts if parts else ""
            log.add("content.empty_part_removed", index, content, message["content"])
        kept.append(message)
    return kept
