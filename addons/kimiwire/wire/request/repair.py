"""The whole request repair: chat-completions body bytes in, repaired body bytes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kimiwire.wire.codecs import json_codec
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.compat import apply_request_compat
from kimiwire.wire.request.history import moonshot_hygiene, repair_history_arguments
from kimiwire.wire.request.moonshot_contract import MoonshotError, contract_for
from kimiwire.wire.request.moonshot_rules import (
    forced_tool_relaxed,
    moonshot_thinking_on,
    rename_tools,
    tool_name_renames,
    tool_results_in_place,
)
from kimiwire.wire.request.moonshot_scan import EVERY_RULE, MessageScan, renames_needed, scan_messages
from kimiwire.wire.request.reasoning import apply_reasoning_policy
from kimiwire.wire.request.thinking_fields import thinking_requested, translate_thinking_fields
from kimiwire.wire.request.tool_ids import UnrepairableShape, canonicalize_tool_ids, history_tool_calls
from kimiwire.wire.servers import openrouter
from kimiwire.wire.servers.models import id_handling, is_k3, thinking_is_a_switch
from kimiwire.wire.servers.policy import Flavor, Policy


@dataclass
class RequestRepairResult:
    body: bytes | None  # the body to send upstream; None: forward the original bytes unchanged
    log: RepairLog
    facts: RequestFacts
    skipped: str | None = None  # why the body was left alone (bad input), if it was
    notes: list[str] = field(default_factory=list)  # how the body was read, when that is worth saying
    # An OpenAI-style 400 message the proxy answers with instead of sending a request the upstream
    # is known to refuse and kimiwire cannot make acceptable (too many tools for the model).
    refusal: str | None = None


def declared_tools(body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    tools: dict[str, Any] = {}
    declared = False
    for entry in body.get("tools") or []:
        function = entry.get("function") if isinstance(entry, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            declared = True
            tools[function["name"]] = function.get("parameters")
    for function in body.get("functions") or []:  # the legacy field
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            declared = True
            tools[function["name"]] = function.get("parameters")
    return declared, tools


def facts_from_body(
    body: dict[str, Any], switch_models: tuple[str, ...] = (), history: tuple[int, list[str]] | None = None
) -> RequestFacts:
    """`switch_models`: model ids the upstream listed as K2.5/K2.6 (their names may not say so).
    `history`: `history_tool_calls` of the messages, when another pass read it already."""
    messages = body.get("messages")
    model = body.get("model")
    declared, tools = declared_tools(body)
    if history is None:
        history = history_tool_calls(messages) if isinstance(messages, list) else (0, [])
    count, names = history
    switch = thinking_is_a_switch(model) or (isinstance(model, str) and model in switch_models)
    return RequestFacts(
        count,
        tools,
        declared,
        body.get("stream") is True,
        names,
        # K2.5 and K2.6 templates prefill `<think>` when thinking is on (smg-project/smg#1873).
        switch and thinking_requested(body),
        k3_model=is_k3(model),
        thinking_off=switch and not thinking_requested(body),
    )


_HISTORY_ROLES = ("assistant", "tool")


def moonshot_fixes(policy: Policy, body: dict[str, Any]) -> bool:
    """Moonshot's request rules apply: on its own API, and for its Kimi models behind OpenRouter."""
    return policy.request_compat == "fix" and moonshot_behind(policy, body)


def moonshot_behind(policy: Policy, body: dict[str, Any]) -> bool:
    """Moonshot's API serves the request (directly, or as OpenRouter's provider of a Kimi model)."""
    return policy.flavor is Flavor.MOONSHOT or (
        policy.flavor is Flavor.OPENROUTER and openrouter.is_kimi_model(body.get("model"))
    )


# OpenRouter has its own thinking and effort fields (wire/servers/openrouter.py): Moonshot's forms of them
# are not sent there.
_NOT_THROUGH_OPENROUTER = frozenset({"compat.reasoning_effort"})


_NO_DEVELOPER_MESSAGE = frozenset({"compat.developer_role"})


def repair_request_object(
    body: dict[str, Any], policy: Policy, renames: dict[str, str] | None = None, scan: MessageScan = EVERY_RULE
) -> RepairLog:
    """Repair a parsed request body in place. Raises UnrepairableShape (before changing
    anything that matters: the caller forwards the original bytes then). `renames`: tool names
    the upstream refuses, client name -> upstream name (`tool_name_renames`). `scan`: which of
    Moonshot's message rules can act on these messages (`scan_messages`; the default runs them all)."""
    messages = body["messages"]
    log = RepairLog()
    behind_gateway = policy.flavor is Flavor.OPENROUTER
    moonshot = moonshot_behind(policy, body)
    if policy.request_compat == "fix":  # first: the thinking switch it may set decides the rest
        skipped = frozenset() if scan.developer_role else _NO_DEVELOPER_MESSAGE
        if behind_gateway and moonshot:
            apply_request_compat(body, Flavor.MOONSHOT, log, without=_NOT_THROUGH_OPENROUTER | skipped)
        else:
            apply_request_compat(body, policy.flavor, log, without=skipped)
    if renames and moonshot_fixes(policy, body):
        rename_tools(body, renames, log, "compat.tool_name")
    repair_history = policy.history == "repair"
    origin = None
    if repair_history and moonshot and scan.hygiene:
        kept = moonshot_hygiene(messages, log)
        if len(kept) != len(messages):  # only a drop moves indexes: then later records are mapped back
            origin = _origin_indexes(messages, kept)
            body["messages"] = messages = kept
    # The tool-id, reasoning and history passes act only on assistant and tool messages: a first
    # turn has none, and skips them.
    if any(isinstance(message, dict) and message.get("role") in _HISTORY_ROLES for message in messages):
        later = RepairLog()
        if policy.tool_ids == "canonical" and id_handling(body.get("model")).history:
            canonicalize_tool_ids(messages, later)
        if behind_gateway:
            openrouter.history_reasoning_from_details(messages, later)
        apply_reasoning_policy(
            messages,
            policy.reasoning,
            later,
            placeholder_for_tool_calls=moonshot
            and moonshot_thinking_on(body)
            and not (behind_gateway and openrouter.reasoning_switched_off(body)),
            key=policy.flavor.history_reasoning_key,
        )
        if behind_gateway:
            openrouter.history_details(messages, later, add=moonshot)
        if repair_history:
            repair_history_arguments(messages, later)
        if origin is not None:
            for entry in later.entries:
                if entry.message_index is not None:
                    entry.message_index = origin[entry.message_index]
        log.extend(later)
        if moonshot_fixes(policy, body) and (scan.results_out_of_place or origin is not None):
            # indexes of the final list: after the others are recorded
            placed = tool_results_in_place(messages, log)
            if placed is not messages:
                body["messages"] = placed
    if policy.thinking_fields == "translate":
        translate_thinking_fields(body, policy.flavor, log)
    return log


def _origin_indexes(messages: list[Any], kept: list[Any]) -> list[int]:
    """For each message of `kept` (a subsequence of `messages`), its index in `messages`."""
    ids = {id(m): i for i, m in enumerate(messages)}
    return [ids[id(m)] for m in kept]


def _refused_before_upstream(body: dict[str, Any]) -> str | None:
    contract = contract_for(body.get("model"))
    tools = body.get("tools")
    limit = contract.max_tools if contract is not None else None
    if limit is not None and isinstance(tools, list) and len(tools) > limit:
        return "kimiwire: " + MoonshotError.TOO_MANY_TOOLS.format(count=len(tools), limit=limit)
    return None


def repair_request_body(raw: bytes, policy: Policy) -> RequestRepairResult:
    log = RepairLog()
    try:
        decoded = json_codec.decode(raw)
    except json_codec.NotJSON as exc:
        return RequestRepairResult(None, log, RequestFacts(), f"body is not valid JSON: {exc}")
    body = decoded.value
    notes = [f"body read by the exact JSON decoder: {decoded.fallback}"] if decoded.fallback else []
    if not isinstance(body, dict):
        return RequestRepairResult(None, log, RequestFacts(), f"body is a JSON {type(body).__name__}, not an object")
    # One pass over the messages says which of Moonshot's message rules can change anything, and
    # reads the facts' history calls on the way.
    messages = body.get("messages")
    scan = scan_messages(messages) if isinstance(messages, list) and moonshot_behind(policy, body) else EVERY_RULE
    facts = facts_from_body(body, policy.thinking_switch_models, scan.history)
    if decoded.fallback:  # the facts go onto the flow, whose files hold only valid UTF-8
        facts.tools = json_codec.storable(facts.tools)
        facts.history_tool_names = json_codec.storable(facts.history_tool_names)
    if not isinstance(body.get("messages"), list):
        return RequestRepairResult(None, log, facts, "`messages` is missing or not a list", notes)
    renames: dict[str, str] = {}
    if moonshot_fixes(policy, body):
        refusal = _refused_before_upstream(body)
        if refusal is not None:
            return RequestRepairResult(None, log, facts, notes=notes, refusal=refusal)
        renames = tool_name_renames(body) if renames_needed(body, scan) else {}
    try:
        log = repair_request_object(body, policy, renames, scan)
    except UnrepairableShape as exc:
        return RequestRepairResult(None, RepairLog(), facts, str(exc), notes)
    facts.tool_renames = {new: old for old, new in renames.items()}
    facts.forced_tool = forced_tool_relaxed(log)
    if not log:
        return RequestRepairResult(None, log, facts, notes=notes)
    try:
        repaired = decoded.encode(body)
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. a string the repair built badly
        return RequestRepairResult(None, RepairLog(), facts, f"repaired body cannot be encoded: {exc}", notes)
    if decoded.fallback:  # the records go onto the flow too
        for entry in log.entries:
            entry.before = json_codec.storable(entry.before)
            entry.after = json_codec.storable(entry.after)
    return RequestRepairResult(repaired, log, facts, notes=notes)
