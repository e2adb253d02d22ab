"""Chat exchanges as text for humans (mitmweb's contentviews, scripts): sans-IO.

Views are laid out for a browser pane (`pane.py`): sections with headings, long lines wrapped.
A response view lists the attempts first when the flow was retried, then the answer as the
upstream sent it and as the client received it, the repairs in words (`repair_words.py`) and
how the stream ended."""

from __future__ import annotations

import time
from typing import Any

import orjson

from kimiwire.inspection.assembled import AssembledResponse, assemble
from kimiwire.inspection.pane import layout
from kimiwire.inspection.repair_words import describe, short
from kimiwire.inspection.rerun import body_content_type
from kimiwire.wire.reasoning_keys import REASONING_KEYS

Section = tuple[str, list[str]]

# How a flow's `ending` reads for a user.
ENDINGS = {
    "natural": "the upstream ended the response itself",
    "retried": "answered by a retry",
    "retries_exhausted": "no answer after every attempt; the client got the failure",
    "idle_timeout": "the proxy ended it: no upstream event for kimi_idle_timeout",
    "first_event_timeout": "the proxy ended it: no first event in time",
    "first_byte_timeout": "the proxy answered 504: no response headers in time",
    "upstream_error": "the upstream failed before responding",
    "upstream_error_mid_stream": "the upstream connection failed mid-stream; ended with an error event",
    "client_disconnected": "the client left",
    "shutdown": "the proxy shut down while it was under way",
    "request_too_large": "the request was too large (413)",
}


def _block(text: str, indent: str = "    ") -> list[str]:
    return [indent + line for line in text.splitlines()] if text else [indent + "(empty)"]


def _pretty_arguments(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments, option=orjson.OPT_INDENT_2).decode()


def response_title(assembled: AssembledResponse, title: str) -> str:
    events = f", {assembled.events} events" if assembled.kind == "stream" else ""
    return f"{title} ({assembled.kind}{events}{', [DONE]' if assembled.done else ''})"


def response_lines(assembled: AssembledResponse, indent: str = "") -> list[str]:
    lines: list[str] = []
    for index, choice in sorted(assembled.choices.items()):
        if len(assembled.choices) > 1:
            lines.append(f"{indent}-- choice {index} --")
        if choice.reasoning:
            fields = "/".join(sorted(choice.reasoning_fields))
            lines += [f"{indent}reasoning ({fields}):", *_block(choice.reasoning, indent + "    ")]
        lines += [f"{indent}content:", *_block(choice.content, indent + "    ")]
        for _, call in sorted(choice.tool_calls.items()):
            data = call.as_dict()
            suffix = f" (in {call.fragments} deltas)" if call.fragments > 1 else ""
            lines += [
                f"{indent}tool call [{call.index}] {data['name']} id={data['id']}{suffix}:",
                *_block(_pretty_arguments(data["arguments"]), indent + "    "),
            ]
        lines.append(f"{indent}finish_reason: {choice.finish_reason}")
    if assembled.usage is not None:
        lines.append(f"{indent}usage: {orjson.dumps(assembled.usage).decode()}")
    for error in assembled.errors:
        lines.append(f"{indent}error: {orjson.dumps(error).decode() if not isinstance(error, str) else error}")
    if not lines:
        lines.append(f"{indent}(nothing a chat client would read)")
    return lines


def render_response(assembled: AssembledResponse, title: str = "response") -> str:
    return layout([(response_title(assembled, title), response_lines(assembled))])


def repairs_section(repairs: list[dict[str, Any]], phase: str | None = None) -> Section:
    chosen = [r for r in repairs if isinstance(r, dict) and (phase is None or r.get("phase") == phase)]
    if not chosen:
        return "repairs: none", []
    return f"repairs ({len(chosen)})", ["  " + describe(r) for r in chosen]


def render_repairs(repairs: list[dict[str, Any]], phase: str | None = None) -> str:
    return layout([repairs_section(repairs, phase)])


def ending_section(record: dict[str, Any]) -> Section | None:
    ending = record.get("ending")
    if not ending:
        return None
    kind, _, reason = str(ending).partition(":")
    words = ENDINGS.get(kind, "")
    if reason:
        words = f"{words} (last: {reason})" if words else reason
    lines = [f"{ending}: {words}" if words else str(ending)]
    for error in record.get("errors") or []:
        lines.append(f"error: {short(error, 400)}")
    return "ending", lines


def attempts_title(attempts: list[dict[str, Any]], ending: str) -> str:
    retries = len(attempts) - 1
    how = "then gave up" if ending.startswith("retries_exhausted") else "the last one answered"
    return f"attempts: {len(attempts)} ({retries} retr{'y' if retries == 1 else 'ies'}, {how})"


def _clock(moment: Any, origin: Any) -> str:
    if not isinstance(moment, (int, float)):
        return ""
    stamp = time.strftime("%H:%M:%S", time.localtime(moment)) + f".{int(moment * 1000) % 1000:03d}"
    if isinstance(origin, (int, float)):
        return f"at {stamp} (+{moment - origin:.3f} s)"
    return f"at {stamp}"


def attempt_heading(attempt: dict[str, Any], origin: Any) -> str:
    number = attempt.get("attempt", "?")
    why = attempt.get("why")
    parts = [f"attempt {number}"]
    if why and why != "first":
        delay = attempt.get("delay")
        parts.append(f"retry after {why}" + (f", waited {delay:g} s" if isinstance(delay, (int, float)) else ""))
    else:
        parts.append("first try")
    status = attempt.get("status")
    parts.append(f"HTTP {status}" if status is not None else "no response")
    when = _clock(attempt.get("started"), origin)
    if when:
        parts.append(when)
    if isinstance(attempt.get("seconds"), (int, float)):
        parts.append(f"took {attempt['seconds']:.3f} s")
    outcome = attempt.get("outcome") or "?"
    detail = attempt.get("detail")
    result = "answered" if outcome == "answered" else f"no answer: {outcome}"
    parts.append(result + (f" ({detail})" if detail else ""))
    return " · ".join(parts)


def attempt_lines(attempt: dict[str, Any], repaired: bytes | None, content_type: str, origin: Any) -> list[str]:
    """An attempt's heading line and what came back (the repaired view of its body)."""
    lines = [attempt_heading(attempt, origin)]
    body = attempt.get("body")
    size = len(body) if isinstance(body, bytes) else attempt.get("bytes")
    if not isinstance(body, bytes) or not body:
        lines.append(f"    came back: nothing{f' ({size} bytes, not kept)' if size else ''}")
        return lines
    shown = repaired if repaired is not None else body
    assembled = assemble(shown, body_content_type(body, content_type))
    label = "repaired" if repaired is not None and repaired != body else "as sent"
    lines.append(f"    came back ({label}; {size} bytes raw, in the view 'Kimi Attempts Raw'):")
    lines += response_lines(assembled, "      ")
    recorded = attempt.get("repairs")  # kept per attempt by records that have them
    if isinstance(recorded, list) and recorded:
        lines.append(f"    repairs on this attempt ({len(recorded)}):")
        lines += ["      " + describe(r) for r in recorded if isinstance(r, dict)]
    return lines


def render_request(body: dict[str, Any], repairs: list[dict[str, Any]]) -> str:
    return layout([("request", request_lines(body, repairs))])


def request_lines(body: dict[str, Any], repairs: list[dict[str, Any]]) -> list[str]:
    """Each message with its tool-call ids, and which ids kimiwire rewrote (either direction:
    the body may be the client's original or the one sent upstream)."""
    rewrites: dict[tuple[int | None, Any], tuple[Any, Any]] = {}
    for repair in repairs:
        if isinstance(repair, dict) and str(repair.get("kind", "")).startswith("ids."):
            rewrites[(repair.get("message_index"), repair.get("before"))] = (repair.get("before"), repair.get("after"))
            rewrites[(repair.get("message_index"), repair.get("after"))] = (repair.get("before"), repair.get("after"))

    def annotate(index: int, tool_id: Any) -> str:
        found = rewrites.get((index, tool_id))
        if found is None:
            return f"{tool_id}"
        before, after = found
        return f"{tool_id}  (was {before})" if tool_id == after else f"{tool_id}  (rewritten to {after})"

    tools = [t.get("function", {}).get("name", "?") for t in body.get("tools") or [] if isinstance(t, dict)]
    lines = [f"model: {body.get('model')}  stream: {body.get('stream')}  tools: {', '.join(tools) or '(none)'}"]
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
        lines.append(header + (f": {short(text, 400)}" if text else ""))
        for key in REASONING_KEYS:
            if message.get(key):
                lines.append(f"      {key}: {short(message[key], 400)}")
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                function = call.get("function") or {}
                lines.append(
                    f"      call {annotate(index, call.get('id'))} {function.get('name')} "
                    f"{short(function.get('arguments'), 400)}"
                )
    return lines
