"""The same response repairs for non-streaming chat completions: JSON body in, JSON body out.

With the same guarantees as streams: when the output was cut (`length`), a call whose arguments
are not closed JSON is delivered as sent and the finish_reason stays; a call whose repair raises
is delivered as sent."""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.response.answer_in_reasoning import reasoning_as_content, reasoning_is_answer
from kimiwire.wire.response.markup import CONTENT, REASONING, MarkupScanner, RecoveredCall, embedded_markup
from kimiwire.wire.response.reasoning_field import TEXT_KEYS, rename_reasoning
from kimiwire.wire.response.think_tags import split_think_tags
from kimiwire.wire.response.tool_calls import CUT_FINISH_REASONS, deliver_call, fix_finish_reason, is_truncated
from kimiwire.wire.servers.openrouter import reasoning_from_details
from kimiwire.wire.servers.policy import Policy


def _recover_markup(
    message: dict[str, Any], declared: frozenset[str], log: RepairLog
) -> tuple[list[RecoveredCall], bool]:
    """Calls recovered from the texts, and whether a K3 call block was cut off (it stays text);
    K3 channels move text between content and reasoning (the whole reasoning is at hand: an
    answer found in it simply moves)."""
    cut = False
    recovered: list[RecoveredCall] = []
    moved: dict[str, str] = {}
    mirrored = isinstance(message.get("reasoning"), str) and message.get("reasoning") == message.get(
        "reasoning_content"
    )
    for key in TEXT_KEYS:
        text = message.get(key)
        if not isinstance(text, str) or not text:
            continue
        if key == "reasoning" and mirrored:  # the same text under both names: scanned once
            message["reasoning"] = message.get("reasoning_content")
            continue
        field = CONTENT if key == "content" else REASONING
        scanner = MarkupScanner(declared, field, keep_copy=field == REASONING)
        head, calls = scanner.feed(text)
        tail, more = scanner.finish()
        calls += more
        cut |= scanner.cut_call
        remaining = head + tail
        other = REASONING if field == CONTENT else CONTENT
        if scanner.moved:
            moved[other] = moved.get(other, "") + "".join(scanner.moved)
            log.add(f"k3.moved_to_{other}", None, key, len("".join(scanner.moved)))
        for kind in dict.fromkeys(scanner.events):
            log.add(kind, None, key, None)
        if remaining == text and not calls:
            continue
        message[key] = remaining if remaining or key != "content" else None
        for call in calls:
            log.add(f"markup.recovered_{call.form}", None, key, call.name)
        recovered += calls
    if moved.get(CONTENT):
        content = message.get("content")
        message["content"] = (content if isinstance(content, str) else "") + moved[CONTENT]
    if moved.get(REASONING):
        keys = [k for k in ("reasoning_content", "reasoning") if isinstance(message.get(k), str)]
        for key in keys or ["reasoning_content"]:
            message[key] = (message.get(key) or "") + moved[REASONING]
    return recovered, cut


def _split_think_tags(message: dict[str, Any], log: RepairLog) -> None:
    """Reasoning that arrived as content with think tags goes to the reasoning field."""
    content = message.get("content")
    if not isinstance(content, str) or ("</think>" not in content and not content.lstrip().startswith("<think>")):
        return
    reasoning, rest, events = split_think_tags(content)
    if reasoning:
        keys = [k for k in ("reasoning_content", "reasoning") if isinstance(message.get(k), str)]
        for key in keys or ["reasoning_content"]:
            message[key] = (message.get(key) or "") + reasoning
    message["content"] = rest if rest or message.get("tool_calls") is None else None
    for kind in events:
        log.add(kind, None, None, None)


def _without_embedded_markup(
    sent: list[tuple[str, Any, Any, Any]], known: frozenset[str], log: RepairLog
) -> list[tuple[str, Any, Any, Any]]:
    """A call whose arguments hold Kimi markup is replaced by the complete calls inside them."""
    kept: list[tuple[str, Any, Any, Any]] = []
    for position, (name, call_id, arguments, as_sent) in enumerate(sent):
        found = embedded_markup(arguments, known) if isinstance(arguments, str) else None
        if found is None:
            kept.append((name, call_id, arguments, as_sent))
            continue
        log.add("markup.in_arguments", position, arguments, [c.name for c in found.calls])
        for incomplete in found.incomplete:
            log.add("markup.in_arguments_incomplete", position, incomplete.name, incomplete.arguments)
        for c in found.calls:
            call = {"id": c.raw_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            kept.append((c.name, c.raw_id, c.arguments, call))
    return kept


def repair_completion_object(body: dict[str, Any], facts: RequestFacts, policy: Policy) -> RepairLog:
    log = RepairLog()
    declared = facts.known_tool_names
    reasoning_to_content = policy.think_tags == "split" and reasoning_is_answer(facts, policy)
    choices = body.get("choices")
    if not isinstance(choices, list):
        return log
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            continue
        message = choice["message"]
        if reasoning_from_details(message, REASONING_KEYS):  # OpenRouter's reasoning_details only
            log.add("reasoning.from_details", None, "reasoning_details", "reasoning")
        if reasoning_to_content and (moved := reasoning_as_content(message)):
            log.add("reasoning.answer_when_thinking_off", None, "reasoning", len(moved))
        if policy.think_tags == "split":
            _split_think_tags(message, log)
        recovered, any_truncated = (
            _recover_markup(message, declared, log) if policy.markup == "recover" else ([], False)
        )
        existing = message.get("tool_calls")
        sent: list[tuple[str, Any, Any, Any]] = []  # name, id, arguments, the call as sent
        if isinstance(existing, list):
            for call in existing:
                function = call.get("function") if isinstance(call, dict) else None
                function = function if isinstance(function, dict) else {}
                upstream_id = call.get("id") if isinstance(call, dict) else None
                sent.append((function.get("name") or "", upstream_id, function.get("arguments"), call))
        for c in recovered:
            as_sent = {"id": c.raw_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            sent.append((c.name, c.raw_id, c.arguments, as_sent))
        cut = choice.get("finish_reason") in CUT_FINISH_REASONS
        replaced = False
        if policy.markup == "recover" and sent and not cut:  # a cut output's calls are not completed
            before = len(log)
            sent = _without_embedded_markup(sent, declared, log)
            replaced = len(log) != before
            if replaced and not sent:
                message.pop("tool_calls", None)
        if sent:
            before = len(log)
            calls = []
            for position, (name, upstream_id, arguments, as_sent) in enumerate(sent):
                truncated = is_truncated(arguments, cut)
                any_truncated |= truncated
                finished = deliver_call(name, upstream_id, arguments, position, truncated, facts, policy, log)
                calls.append(as_sent if finished is None else finished)
            if len(log) != before or recovered or replaced:
                message["tool_calls"] = calls
        if rename_reasoning(message, policy.reasoning_field):
            log.add("reasoning.field_renamed", None, None, policy.reasoning_field)
        choice["finish_reason"] = fix_finish_reason(
            choice.get("finish_reason"), bool(sent), None, log, policy, truncated=any_truncated
        )
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
