"""Chat exchanges as text for humans (mitmweb's contentviews, scripts): sans-IO."""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.inspection.assembled import AssembledResponse
from kimiwire.wire.reasoning_keys import REASONING_KEYS


def _block(text: str, indent: str = "    ") -> str:
    return "\n".join(indent + line for line in text.splitlines()) if text else indent + "(empty)"


def _pretty_arguments(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments, option=orjson.OPT_INDENT_2).decode()


def render_response(assembled: AssembledResponse, title: str = "response") -> str:
    lines = [f"== {title} ({assembled.kind}, {assembled.events} events{', [DONE]' if assembled.done else ''}) =="]
    for index, choice in sorted(assembled.choices.items()):
        if len(assembled.choices) > 1:
            lines.append(f"-- choice {index} --")
        if choice.reasoning:
            fields = "/".join(sorted(choice.reasoning_fields))
            lines += [f"reasoning ({fields}):", _block(choice.reasoning)]
        lines += ["content:", _block(choice.content)]
        for _, call in sorted(choice.tool_calls.items()):
            data = call.as_dict()
            suffix = f" ({call.fragments} fragments)" if call.fragments > 1 else ""
            lines += [
                f"tool call [{call.index}] {data['name']} id={data['id']}{suffix}:",
                _block(_pretty_arguments(data["arguments"])),
            ]
        lines.append(f"finish_reason: {choice.finish_reason}")
    if assembled.usage is not None:
        lines.append(f"usage: {orjson.dumps(assembled.usage).decode()}")
    for error in assembled.errors:
        lines.append(f"error: {orjson.dumps(error).decode() if not isinstance(error, str) else error}")
    return "\n".join(lines)


def render_repairs(repairs: list[dict[str, Any]], phase: str | None = None) -> str:
    chosen = [r for r in repairs if phase is None or r.get("phase") == phase]
    if not chosen:
        return "repairs: none"
    lines = [f"repairs ({len(chosen)}):"]
    for repair in chosen:
        where = "" if repair.get("message_index") is None else f" @{repair['message_index']}"
        lines.append(f"  {repair['kind']}{where}: {_short(repair.get('before'))} -> {_short(repair.get('after'))}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_request(body: dict[str, Any], repairs: list[dict[str, Any]]) -> str:
    """Each message with its tool-call ids, and which ids kimiwire rewrote (either direction:
    the body may be the client's original or the one sent upstream)."""
    rewrites: dict[tuple[int | None, Any], tuple[Any, Any]] = {}
    for repair in repairs:
        if str(repair.get("kind", "")).startswith("ids."):
            rewrites[(repair.get("message_index"), repair.get("before"))] = (repair.get("before"), repair.get("after"))
            rewrites[(repair.get("message_index"), repair.get("after"))] = (repair.get("before"), repair.get("after"))

    def annotate(index: int, tool_id: Any) -> str:
        found = rewrites.get((index, tool_id))
        if found is None:
            return f"{tool_id}"
        before, after = found
        return f"{tool_id}  (was {before})" if tool_id == after else f"{tool_id}  (rewritten to {after})"

    lines = [
        f"model: {body.get('model')}  stream: {body.get('stream')}  tools: "
        + ", ".join(t.get("function", {}).get("name", "?") for t in body.get("tools") or [] if isinstance(t, dict))
    ]
    for index, message in enumerate(body.get("messages") or []):
        if not isinstance(message, dict):
            lines.append(f"[{index}] {message!r}")
            continue
        role = message.get("role")
        content = message.get("content")
        text = content if isinstance(content, str) else orjson.dumps(content).decode() if content else ""
        header = f"[{index}] {role}"
        if role == "tool":
            header += f" answers {annotate(index, message.get('tool_call_id'))}"
        lines.append(header + (f": {_short(text, 200)}" if text else ""))
        for key in REASONING_KEYS:
            if message.get(key):
                lines.append(f"      {key}: {_short(message[key], 200)}")
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                function = call.get("function") or {}
                lines.append(
                    f"      call {annotate(index, call.get('id'))} {function.get('name')} "
                    f"{_short(function.get('arguments'), 200)}"
                )
    return "\n".join(lines)
