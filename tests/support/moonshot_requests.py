"""Requests as harnesses send them to Moonshot behind a proxy on 127.0.0.1 (so with OpenAI's
defaults), for the Moonshot contract tests: (label, body, the client's intent as a check on the
body kimiwire sends). Shapes from the harnesses' own code and public reports (named per entry)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

MCP = json.loads((Path(__file__).parent.parent / "fixtures" / "mcp_tool_sets.json").read_text())


def _tool(name: str, parameters: dict[str, Any] | None = None, strict: bool | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": name, "parameters": parameters or {"type": "object"}}
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


READ = _tool("read", {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})


def _call(k: int, name: str = "read") -> dict[str, Any]:
    return {"id": f"functions.{name}:{k}", "type": "function", "function": {"name": name, "arguments": '{"path": "a"}'}}


def _loops(n: int, reasoning: Callable[[int], str | None], key: str = "reasoning_content") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent."}]
    for k in range(n):
        messages.append({"role": "user", "content": f"task {k}"})
        assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [_call(k)]}
        if reasoning(k) is not None:
            assistant[key] = reasoning(k)
        messages += [assistant, {"role": "tool", "tool_call_id": f"functions.read:{k}", "content": "x"}]
        messages.append({"role": "assistant", "content": f"done {k}"})
    messages.append({"role": "user", "content": "next task"})
    return messages


def _kept(body: dict[str, Any], expected: list[str]) -> bool:
    return [m.get("reasoning_content") for m in body["messages"] if m.get("tool_calls")] == expected


def _ms365() -> list[dict[str, Any]]:
    return [_tool(t["name"], t["inputSchema"]) for t in MCP["ms-365"]["tools"]]


def _mcp(server: str, prefix: str) -> list[dict[str, Any]]:
    return [_tool(f"{prefix}{t['name']}", t["inputSchema"]) for t in MCP[server]["tools"]]


Intent = Callable[[dict[str, Any]], bool]
USER = [{"role": "user", "content": "read a"}]

HARNESS_REQUESTS: list[tuple[str, dict[str, Any], Intent]] = [
    (
        "OpenAI SDK defaults (developer role, max_completion_tokens, store, temperature, strict, required)",
        {
            "model": "kimi-k2.6",
            "messages": [{"role": "developer", "content": "sys"}, *USER],
            "max_completion_tokens": 8000,
            "store": False,
            "temperature": 0.2,
            "tools": [_tool("read", READ["function"]["parameters"], strict=True)],
            "tool_choice": "required",
        },
        lambda b: b["tool_choice"] == "required" and b["max_tokens"] == 8000,
    ),
    (
        "OpenAI SDK agent loop: 3 loops, no reasoning kept",
        {"model": "kimi-k2.6", "messages": _loops(3, lambda k: None), "tools": [READ]},
        lambda b: _kept(b, [" ", " ", " "]),
    ),
    (
        "pi-ai: 3 loops, every reasoning kept (accepted direct; the loop policy stripped it)",
        {"model": "kimi-k2.6", "messages": _loops(3, lambda k: f"r{k}"), "tools": [READ]},
        lambda b: _kept(b, ["r0", "r1", "r2"]),
    ),
    (
        "pi-ai: reasoning_effort medium, 2 loops kept (earendil-works/pi#5633)",
        {"model": "kimi-k2.6", "messages": _loops(2, lambda k: f"r{k}"), "tools": [READ], "reasoning_effort": "medium"},
        lambda b: _kept(b, ["r0", "r1"]) and "reasoning_effort" not in b,
    ),
    (
        "OpenClaw moonshot plugin: thinking enabled and reasoning_effort low",
        {
            "model": "kimi-k2.6",
            "messages": USER,
            "tools": [READ],
            "thinking": {"type": "enabled"},
            "reasoning_effort": "low",
        },
        lambda b: b["thinking"] == {"type": "enabled"},
    ),
    (
        "OpenClaw #82550: empty reasoning_content placeholder on tool-call turns",
        {"model": "kimi-k2.6", "messages": _loops(2, lambda k: ""), "tools": [READ]},
        lambda b: _kept(b, [" ", " "]),
    ),
    (
        "K2.7-code with reasoning_effort none (became thinking disabled)",
        {"model": "kimi-k2.7-code", "messages": USER, "tools": [READ], "reasoning_effort": "none"},
        lambda b: "thinking" not in b,
    ),
    (
        "K2.7-code with thinking disabled (AI SDK providerOptions)",
        {"model": "kimi-k2.7-code", "messages": USER, "thinking": {"type": "disabled"}},
        lambda b: "thinking" not in b,
    ),
    (
        "K2.7-code tool_choice required",
        {"model": "kimi-k2.7-code", "messages": USER, "tools": [READ], "tool_choice": "required"},
        lambda b: b["tool_choice"] == "auto",
    ),
    (
        "K3 reasoning_effort low (dropped: K3 at max effort)",
        {"model": "kimi-k3", "messages": USER, "reasoning_effort": "low"},
        lambda b: b.get("reasoning_effort") == "low",
    ),
    (
        "K3 named tool_choice (structured output by a pinned tool)",
        {
            "model": "kimi-k3",
            "messages": USER,
            "tools": [READ],
            "tool_choice": {"type": "function", "function": {"name": "read"}},
        },
        lambda b: b["tool_choice"] == "auto",
    ),
    (
        "K3 with thinking enabled and reasoning_effort high",
        {"model": "kimi-k3", "messages": USER, "thinking": {"type": "enabled"}, "reasoning_effort": "high"},
        lambda b: b.get("reasoning_effort") == "high",
    ),
    (
        "K3 n=2, temperature 0.7 (LangChain)",
        {"model": "kimi-k3", "messages": USER, "n": 2, "temperature": 0.7},
        lambda b: "n" not in b,
    ),
    (
        "K2.5 named tool_choice with thinking on",
        {
            "model": "kimi-k2.5",
            "messages": USER,
            "tools": [READ],
            "tool_choice": {"type": "function", "function": {"name": "read"}},
        },
        lambda b: b["thinking"] == {"type": "disabled"},
    ),
    (
        "boolean thinking (vercel/ai#19553)",
        {"model": "kimi-k2.6", "messages": USER, "thinking": True},
        lambda b: b["thinking"] == {"type": "enabled"},
    ),
    (
        "top_p 1.0 and penalties from a harness's defaults",
        {"model": "kimi-k2.6", "messages": USER, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.1},
        lambda b: "top_p" not in b,
    ),
    (
        "Codex: dotted tool name multi_tool_use.parallel",
        {"model": "kimi-k2.6", "messages": USER, "tools": [READ, _tool("multi_tool_use.parallel")]},
        lambda b: b["tools"][1]["function"]["name"] == "multi_tool_use_parallel",
    ),
    (
        "opencode MCP server key starting with a digit (1c-docs_search)",
        {"model": "kimi-k2.6", "messages": USER, "tools": [_tool("1c-docs_search")]},
        lambda b: b["tools"][0]["function"]["name"].startswith("t_1c"),
    ),
    (
        "dotted MCP names in tools and in the history",
        {
            "model": "kimi-k2.6",
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [_call(0, "fs.read")]},
                {"role": "tool", "tool_call_id": "functions.fs.read:0", "content": "x"},
            ],
            "tools": [_tool("fs.read")],
        },
        lambda b: b["messages"][1]["tool_calls"][0]["function"]["name"] == "fs_read",
    ),
    (
        "GitHub MCP tool set (117 tools), prefixed github_",
        {"model": "kimi-k2.6", "messages": USER, "tools": _mcp("github", "github_")},
        lambda b: len(b["tools"]) == 117,
    ),
    (
        "Notion MCP tool set (24 tools)",
        {"model": "kimi-k2.6", "messages": USER, "tools": _mcp("notion", "")},
        lambda b: len(b["tools"]) == 24,
    ),
    (
        "filesystem MCP tool set, dotted names filesystem.read_file",
        {"model": "kimi-k2.6", "messages": USER, "tools": _mcp("filesystem", "filesystem.")},
        lambda b: all("." not in t["function"]["name"] for t in b["tools"]),
    ),
    (
        "ms-365 MCP tool set (188 tools; 7 schemas with type [string, null] beside default)",
        {"model": "kimi-k2.6", "messages": USER, "tools": _ms365()},
        lambda b: len(b["tools"]) == 188,
    ),
    (
        "zod discriminated union: type beside anyOf (Claude Code's actor tool)",
        {
            "model": "kimi-k2.6",
            "messages": USER,
            "tools": [
                _tool(
                    "actor",
                    {
                        "type": "object",
                        "properties": {
                            "op": {
                                "type": "object",
                                "anyOf": [
                                    {"properties": {"a": {"type": "string"}}},
                                    {"properties": {"b": {"type": "number"}}},
                                ],
                            }
                        },
                    },
                )
            ],
        },
        lambda b: "type" not in b["tools"][0]["function"]["parameters"]["properties"]["op"],
    ),
    (
        "pydantic v1 schema: #/definitions refs",
        {
            "model": "kimi-k2.6",
            "messages": USER,
            "tools": [
                _tool(
                    "put",
                    {
                        "type": "object",
                        "properties": {"item": {"$ref": "#/definitions/Item"}},
                        "definitions": {"Item": {"type": "object", "properties": {"id": {"type": "integer"}}}},
                    },
                )
            ],
        },
        lambda b: "$defs" in b["tools"][0]["function"]["parameters"],
    ),
    (
        "a user message typed while tools ran, inside the block of results",
        {
            "model": "kimi-k2.6",
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [_call(0), _call(1)]},
                {"role": "tool", "tool_call_id": "functions.read:0", "content": "a"},
                {"role": "user", "content": "also check b"},
                {"role": "tool", "tool_call_id": "functions.read:1", "content": "b"},
            ],
            "tools": [READ],
        },
        lambda b: [m["role"] for m in b["messages"]][-3:] == ["tool", "tool", "user"],
    ),
    (
        "an interrupted call without a result (kimi-cli#1977)",
        {
            "model": "kimi-k2.6",
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [_call(0)]},
                {"role": "user", "content": "stop, do something else"},
            ],
            "tools": [READ],
        },
        lambda b: b["messages"][2]["role"] == "tool" and b["messages"][3]["role"] == "user",
    ),
    (
        "kimi-for-coding with the ms-365 tool set (188 tools: over its 128)",
        {"model": "kimi-for-coding", "messages": USER, "tools": _ms365()},
        lambda b: True,
    ),
]
