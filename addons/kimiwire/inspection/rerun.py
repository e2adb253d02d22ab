"""Re-running the repairs offline on a saved exchange (sans-IO): what would the upstream get and
the client receive now, with the current policy. Used by `scripts/replay`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kimiwire.inspection.assembled import AssembledResponse, assemble
from kimiwire.wire import chat_exchanges
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Policy


@dataclass
class Rerun:
    upstream_request: bytes
    delivered: bytes
    facts: RequestFacts
    request_log: RepairLog
    response_log: RepairLog


def rerun_exchange(
    client_request: bytes,
    status: int,
    content_type: str,
    upstream_body: bytes,
    policy: Policy,
    ending: str | None = None,
    error_event: bytes | None = None,
) -> Rerun:
    """`ending` and `error_event` say how the live stream ended, so a stream the proxy cut short
    (idle timeout, upstream failure) is cut the same way. As live, the response is repaired even
    when the request was left alone (with what could be learnt from it)."""
    request = repair_request_body(client_request, policy)
    upstream_request = request.body if request.body is not None else client_request
    response_log = RepairLog()
    delivered = upstream_body
    if status < 400:
        try:
            if chat_exchanges.is_event_stream(content_type):
                repairer = StreamRepairer(request.facts, policy)
                response_log = repairer.log
                out = repairer.feed(upstream_body)
                if error_event is not None:
                    out += repairer.end_with_error(error_event)
                else:
                    out += repairer.end(drop_partial=ending is not None and ending.startswith("proxy_"))
                delivered = b"".join(out)
            elif chat_exchanges.is_json(content_type):
                new_body, response_log, _ = repair_completion_body(upstream_body, request.facts, policy)
                delivered = new_body if new_body is not None else upstream_body
        except Exception as exc:  # as live: a repair that raises costs the repair, never the response
            delivered = upstream_body
            response_log.add("repair.failed", None, None, f"{type(exc).__name__}: {exc}"[:300])
    return Rerun(upstream_request, delivered, request.facts, request.log, response_log)


def _request_ids(body: bytes) -> list[tuple[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    ids: list[tuple[str, Any]] = []
    for message in data.get("messages") or [] if isinstance(data, dict) else []:
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                ids.append(("call", call.get("id")))
        if message.get("role") == "tool":
            ids.append(("result", message.get("tool_call_id")))
    return ids


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_differences(
    old_request: bytes, new_request: bytes, old: AssembledResponse, new: AssembledResponse
) -> list[str]:
    """Readable lines for what changed: request ids, then per choice finish_reason, tool calls, text."""
    lines: list[str] = []
    old_ids, new_ids = _request_ids(old_request), _request_ids(new_request)
    if old_ids != new_ids:
        lines.append("upstream request ids:")
        for (kind, before), (_, after) in zip(old_ids, new_ids, strict=False):
            marker = " " if before == after else "~"
            lines.append(f"  {marker} {kind:6} {before} -> {after}" if before != after else f"    {kind:6} {after}")
        if len(old_ids) != len(new_ids):
            lines.append(f"  ~ {len(old_ids)} ids before, {len(new_ids)} now")
    for index in sorted(set(old.choices) | set(new.choices)):
        before = old.choices.get(index)
        after = new.choices.get(index)
        b = before.as_dict() if before else {}
        a = after.as_dict() if after else {}
        if b.get("finish_reason") != a.get("finish_reason"):
            lines.append(f"choice {index} finish_reason: {b.get('finish_reason')} -> {a.get('finish_reason')}")
        if b.get("tool_calls") != a.get("tool_calls"):
            lines.append(f"choice {index} tool calls:")
            for call in b.get("tool_calls") or []:
                lines.append(f"  - {call['id']} {call['name']} {_short(call['arguments'])}")
            for call in a.get("tool_calls") or []:
                lines.append(f"  + {call['id']} {call['name']} {_short(call['arguments'])}")
        for key in ("content", "reasoning"):
            if b.get(key) != a.get(key):
                lines.append(f"choice {index} {key}: {_short(b.get(key))!r} -> {_short(a.get(key))!r}")
    if old.errors != new.errors:
        lines.append(f"errors: {_short(old.errors)} -> {_short(new.errors)}")
    if old.done != new.done:
        lines.append(f"[DONE]: {old.done} -> {new.done}")
    return lines


def compare(
    old_request: bytes, new_request: bytes, old_delivered: bytes, new_delivered: bytes, content_type: str
) -> list[str]:
    return describe_differences(
        old_request, new_request, assemble(old_delivered, content_type), assemble(new_delivered, content_type)
    )


@dataclass(frozen=True)
class RetrySource:
    """The attempt whose body a retried flow's answer came from (for an exhausted flow, the last),
    and how the flow ended."""

    status: int
    content_type: str
    body: bytes
    exhausted: bool


def body_content_type(body: bytes, recorded: str = "") -> str:
    """A body's content type: the recorded one, else told from the bytes (SSE or JSON)."""
    if recorded:
        return recorded
    head = body.lstrip()[:64]
    return "text/event-stream" if head.startswith((b"data:", b":", b"event:")) else "application/json"


def _recorded_content_type(attempt: dict[str, Any]) -> str:
    headers = attempt.get("headers")
    for pair in headers if isinstance(headers, (list, tuple)) else []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            continue
        key, value = (v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in pair)
        if key.lower() == "content-type":
            return value
    return ""


def retry_source(record: dict[str, Any]) -> RetrySource | None:
    """For a flow answered by a retry (or whose retries ran out): the last attempt that kept a body.
    Records of other versions may carry more fields per attempt; they are ignored."""
    ending = str(record.get("ending", ""))
    attempts = record.get("attempts")
    if not ending.startswith(("retried", "retries_exhausted")) or not isinstance(attempts, list):
        return None
    for attempt in reversed(attempts):
        if isinstance(attempt, dict) and isinstance(attempt.get("body"), bytes) and attempt["body"]:
            status = attempt.get("status")
            body = attempt["body"]
            return RetrySource(
                status if isinstance(status, int) else 200,
                body_content_type(body, _recorded_content_type(attempt)),
                body,
                ending.startswith("retries_exhausted"),
            )
    return None


def compare_retried(
    old_request: bytes, new_request: bytes, old_delivered: bytes, new_delivered: bytes, source: RetrySource
) -> list[str]:
    """Like `compare`, for a retried flow re-run on its last attempt: the reasoning of earlier
    attempts reached the client live ahead of the answer's, and when no attempt answered (and
    the re-run still does not) the client got the failure instead of the attempt's ending."""
    old = assemble(old_delivered, source.content_type)
    new = assemble(new_delivered, source.content_type)
    still_no_answer = source.exhausted
    for index, choice in new.choices.items():
        before = old.choices.get(index)
        if before is None:
            continue
        if choice.reasoning and before.reasoning.endswith(choice.reasoning):
            choice.reasoning = before.reasoning
            choice.reasoning_fields |= before.reasoning_fields
        answered = bool(choice.content or choice.tool_calls)
        still_no_answer = still_no_answer and not answered
        if source.exhausted and not answered:
            choice.finish_reason = before.finish_reason
    if still_no_answer:
        new.errors, new.done = old.errors, old.done
    return describe_differences(old_request, new_request, old, new)
