"""The same response repairs for non-streaming chat completions: JSON body in, JSON body out."""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.policy import Policy
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.response.markup import MarkupScanner, RecoveredCall
from kimiwire.wire.response.reasoning_field import TEXT_KEYS, rename_reasoning
from kimiwire.wire.response.tool_calls import finalize_call, fix_finish_reason


def _recover_markup(message: dict[str, Any], declared: frozenset[str], log: RepairLog) -> list[RecoveredCall]:
    recovered: list[RecoveredCall] = []
    for key in TEXT_KEYS:
        text = message.get(key)
        if not isinstance(text, str) or not text:
            continue
        scanner = MarkupScanner(declared)
        head, calls = scanner.feed(text)
        tail, more = scanner.finish()
        calls += more
        remaining = head + tail
        if remaining == text and not calls:
            continue
        message[key] = remaining if remaining or key != "content" else None
        for call in calls:
            log.add(f"markup.recovered_{call.form}", None, key, call.name)
        recovered += calls
    return recovered


def repair_completion_object(body: dict[str, Any], facts: RequestFacts, policy: Policy) -> RepairLog:
    log = RepairLog()
    declared = frozenset(facts.tools)
    choices = body.get("choices")
    if not isinstance(choices, list):
        return log
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            continue
        message = choice["message"]
        recovered = _recover_markup(message, declared, log) if policy.markup == "recover" else []
        existing = message.get("tool_calls")
        raw_calls: list[tuple[str, Any, Any]] = []
        if isinstance(existing, list):
            for call in existing:
                function = call.get("function") if isinstance(call, dict) else None
                function = function if isinstance(function, dict) else {}
                raw_calls.append(
                    (
                        function.get("name") or "",
                        call.get("id") if isinstance(call, dict) else None,
                        function.get("arguments"),
                    )
                )
        raw_calls += [(c.name, c.raw_id, c.arguments) for c in recovered]
        if raw_calls:
            before = len(log)
            calls = [finalize_call(n, i, a, p, facts, policy, log) for p, (n, i, a) in enumerate(raw_calls)]
            if len(log) != before or recovered:
                message["tool_calls"] = calls
        if rename_reasoning(message, policy.reasoning_field):
            log.add("reasoning.field_renamed", None, None, policy.reasoning_field)
        choice["finish_reason"] = fix_finish_reason(choice.get("finish_reason"), bool(raw_calls), None, log, policy)
        usage = choice.get("usage")
        if policy.finish == "fix" and isinstance(usage, dict) and body.get("usage") is None:
            body["usage"] = usage
            log.add("usage.hoisted", None, None, "usage")
    return log


def repair_completion_body(
    raw: bytes, facts: RequestFacts, policy: Policy
) -> tuple[bytes | None, RepairLog, str | None]:
    """(new body or None when unchanged, repairs, why it was left alone)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, RepairLog(), f"response is not valid JSON: {exc}"
    if not isinstance(body, dict):
        return None, RepairLog(), "response is not a JSON object"
    log = repair_completion_object(body, facts, policy)
    return (orjson.dumps(body) if log else None), log, None
