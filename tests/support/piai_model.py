"""A model of how pi-ai 0.67.68 (`streamOpenAICompletions`, inside OpenClaw 2026.4.21) parses a
chat-completions stream: one "current block"; a tool delta continues the current tool call unless
it carries a different non-empty id; any text or reasoning delta closes it (shared notes,
openclaw-client.md §1.3). Used to show a repaired stream is read correctly and a raw one is not."""

from __future__ import annotations

import json
from typing import Any

import json_repair
import orjson
from kimiwire.wire.codecs.sse import SSEDecoder


def _parse_streaming_json(text: str) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = json_repair.loads(text)
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


def piai_parse(body: bytes) -> dict[str, Any]:
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.end()
    blocks: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    stop = None
    for event in events:
        if event.data is None or event.data == b"[DONE]":
            continue
        chunk = orjson.loads(event.data)
        if "error" in chunk:
            stop = "error"
            continue
        if not chunk.get("choices"):
            continue
        choice = chunk["choices"][0]
        if choice.get("finish_reason"):
            stop = {"stop": "stop", "length": "length", "tool_calls": "toolUse"}.get(choice["finish_reason"], "error")
        delta = choice.get("delta") or {}
        if delta.get("content"):
            if current is None or current["type"] != "text":
                current = {"type": "text", "text": ""}
                blocks.append(current)
            current["text"] += delta["content"]
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or delta.get("reasoning_text")
        if reasoning:
            if current is None or current["type"] != "thinking":
                current = {"type": "thinking", "text": ""}
                blocks.append(current)
            current["text"] += reasoning
        for tc in delta.get("tool_calls") or []:
            if current is None or current["type"] != "toolCall" or (tc.get("id") and tc["id"] != current["id"]):
                current = {"type": "toolCall", "id": tc.get("id") or "", "name": "", "partial": ""}
                blocks.append(current)
            if tc.get("id"):
                current["id"] = tc["id"]
            function = tc.get("function") or {}
            if function.get("name"):
                current["name"] = function["name"]
            if function.get("arguments"):
                current["partial"] += function["arguments"]
    calls = [(b["id"], b["name"], _parse_streaming_json(b["partial"])) for b in blocks if b["type"] == "toolCall"]
    return {
        "calls": calls,
        "text": "".join(b["text"] for b in blocks if b["type"] == "text"),
        "thinking": "".join(b["text"] for b in blocks if b["type"] == "thinking"),
        "stop": stop,
    }


def guide_accumulate(body: bytes, choice: int = 0) -> list[tuple[Any, Any, str]]:
    """How OpenAI's function-calling guide (and much hand-written client code) rebuilds streamed
    calls: `if index not in final: final[index] = tool_call`, then every delta's arguments, the
    first delta's included, are appended (so a first delta must carry `arguments: ""`).
    Returns (id, name, arguments) in index order."""
    decoder = SSEDecoder()
    final: dict[int, dict[str, Any]] = {}
    for event in decoder.feed(body) + decoder.end():
        if event.data is None or event.data == b"[DONE]":
            continue
        chunk = json.loads(event.data)  # Python's json, as such clients use: it reads NaN
        for c in chunk.get("choices") or []:
            if c.get("index", 0) != choice:
                continue
            for tc in (c.get("delta") or {}).get("tool_calls") or []:
                index = tc.get("index")
                function = tc.get("function") or {}
                if index not in final:
                    final[index] = {
                        "id": tc.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments") or "",
                    }
                final[index]["arguments"] += function.get("arguments") or ""
    return [
        (c["id"], c["name"], c["arguments"])
        for _, c in sorted(final.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    ]
