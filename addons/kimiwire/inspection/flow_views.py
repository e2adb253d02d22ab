"""The three mitmweb views of a chat flow as text (sans-IO; `mitm/contentview.py` is the adapter):
the response (attempts, answer, repairs, ending), the request, and the attempts' raw bodies.

They read `flow.metadata["kimiwire"]` as captures record it, and tolerate records of other
versions (missing or extra fields): a view never raises on a record."""

from __future__ import annotations

from typing import Any

from kimiwire.inspection.assembled import assemble
from kimiwire.inspection.pane import layout
from kimiwire.inspection.presentation import (
    Section,
    attempt_lines,
    attempts_title,
    ending_section,
    repairs_section,
    request_lines,
    response_lines,
    response_title,
)
from kimiwire.inspection.rerun import body_content_type, rerun_exchange
from kimiwire.wire.servers.policy import Policy


def _attempts(record: dict[str, Any]) -> list[dict[str, Any]]:
    attempts = record.get("attempts")
    return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []


def _attempt_content_type(attempt: dict[str, Any]) -> str:
    for key, value in attempt.get("headers") or []:
        name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if name.lower() == "content-type":
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return ""


def _repaired(
    record: dict[str, Any], client_request: bytes, attempt: dict[str, Any], content_type: str
) -> bytes | None:
    """The attempt's body as the repairs make it now (with the flow's recorded policy), or None."""
    body, status = attempt.get("body"), attempt.get("status")
    policy = record.get("policy")
    if not isinstance(body, bytes) or not body or not isinstance(policy, dict):
        return None
    try:
        rerun = rerun_exchange(
            client_request, status if isinstance(status, int) else 200, content_type, body, Policy.from_dict(policy)
        )
    except Exception:
        return None
    return rerun.delivered


def attempts_section(record: dict[str, Any], client_request: bytes, request_start: Any) -> Section | None:
    attempts = _attempts(record)
    if len(attempts) < 2:
        return None
    lines: list[str] = []
    for attempt in attempts:
        body = attempt.get("body")
        content_type = body_content_type(body if isinstance(body, bytes) else b"", _attempt_content_type(attempt))
        lines += attempt_lines(
            attempt, _repaired(record, client_request, attempt, content_type), content_type, request_start
        )
    return attempts_title(attempts, str(record.get("ending", ""))), lines


def response_view(
    data: bytes, content_type: str, record: dict[str, Any], client_request: bytes = b"", request_start: Any = None
) -> str:
    sections: list[Section] = []
    attempts = attempts_section(record, client_request, request_start)
    if attempts is not None:
        sections.append(attempts)
    upstream = assemble(data, content_type)
    sections.append((response_title(upstream, "as the upstream sent it"), response_lines(upstream)))
    delivered = record.get("delivered")
    if isinstance(delivered, bytes) and delivered and delivered != data:
        received = assemble(delivered, content_type)
        sections.append((response_title(received, "as the client received it"), response_lines(received)))
    elif record:
        sections.append(("as the client received it: the same bytes", []))
    if record:
        sections.append(repairs_section(record.get("repairs") or [], "response"))
        ending = ending_section(record)
        if ending is not None:
            sections.append(ending)
    return layout(sections)


def request_view(body: Any, record: dict[str, Any]) -> str:
    if not isinstance(body, dict):
        return layout([("not a chat-completions request", ["the body is JSON but not an object"])])
    repairs = record.get("repairs") or []
    sections: list[Section] = [("request as the client sent it", request_lines(body, repairs))]
    if record:
        sections.append(repairs_section(repairs, "request"))
    return layout(sections)


def attempts_raw_view(record: dict[str, Any]) -> str:
    attempts = _attempts(record)
    if not attempts:
        return layout([("no attempts recorded", ["this flow was answered by its first attempt"])])
    sections: list[Section] = []
    for attempt in attempts:
        body = attempt.get("body")
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else "(not kept)"
        sections.append((f"attempt {attempt.get('attempt', '?')} raw body", text.splitlines() or ["(empty)"]))
    return layout(sections)


def wrong_view(view: str, reason: str, hint: str) -> str:
    return layout([(f"{view}: {reason}", [hint])])
