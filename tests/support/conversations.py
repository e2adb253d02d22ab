"""Builders for chat-completions request bodies used across the tests."""

from __future__ import annotations

import json
from typing import Any

READ_TOOL = {
    "type": "function",
    "function": {
        "name": "read",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}
EXEC_TOOL = {
    "type": "function",
    "function": {
        "name": "exec",
        "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}
TOOLS = [READ_TOOL, EXEC_TOOL]


def call(call_id: Any, name: str, args: Any = None) -> dict[str, Any]:
    arguments = args if isinstance(args, str) else json.dumps(args if args is not None else {"path": "a.txt"})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant(*calls: dict[str, Any], content: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    message.update(extra)
    return message


def tool(call_id: Any, content: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content, **extra}


def user(text: str = "go") -> dict[str, Any]:
    return {"role": "user", "content": text}


def body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "kimi-k2-thinking", "messages": messages, "tools": TOOLS, "stream": True, **extra}
