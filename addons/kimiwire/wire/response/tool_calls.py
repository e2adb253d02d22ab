"""A tool call the model made, finalized for the client: canonical id, repaired arguments,
and checked (not altered) against the tools the request declared."""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.arguments import fix_response_arguments, unrepaired_arguments
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.tool_ids import canonical_id
from kimiwire.wire.response.schema_check import check_arguments
from kimiwire.wire.response.tool_call_assembly import arguments_closed
from kimiwire.wire.servers.policy import Policy


def finalize_call(
    name: str,
    upstream_id: Any,
    arguments: Any,
    position: int,
    facts: RequestFacts,
    policy: Policy,
    log: RepairLog,
) -> dict[str, Any]:
    """The complete OpenAI tool call for the call at `position` in this response's choice."""
    name = client_tool_name(name, position, facts, log)
    fixed = fix_response_arguments(arguments) if policy.arguments == "repair" else unrepaired_arguments(arguments)
    if fixed.kind is not None:
        log.add(fixed.kind, position, arguments, fixed.text)
    if not name:
        log.add("tool.nameless", position, upstream_id, None)
    elif facts.tools_declared and name not in facts.tools:
        log.add("tool.undeclared", position, name, sorted(facts.tools))
    elif fixed.value is not None and (schema := facts.tools.get(name)):
        check = check_arguments(schema, fixed.value)
        if check.violation:
            log.add("args.schema_violation", position, orjson.loads(fixed.text), check.violation)
        elif check.unchecked:
            log.add("args.schema_unchecked", position, name, check.unchecked)
    if policy.tool_ids == "canonical" or not upstream_id:
        call_id = canonical_id(name, facts.history_tool_calls + position)
        if upstream_id != call_id:
            log.add("ids.response", position, upstream_id, call_id)
    else:
        call_id = upstream_id
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": fixed.text}}


def client_tool_name(name: str, position: int, facts: RequestFacts, log: RepairLog) -> str:
    """The client's own name for a tool the request sent renamed (a name the upstream refuses)."""
    client = facts.tool_renames.get(name)
    if client is None:
        return name
    log.add("tool.name_restored", position, name, client)
    return client


def restore_streamed_names(tool_deltas: list[Any], facts: RequestFacts, log: RepairLog) -> bool:
    """`kimi_tool_stream=passthrough`: a call streamed under a name the request sent renamed goes
    out under the client's name (a call's name comes whole, in its first delta). True when one did."""
    if not facts.tool_renames:
        return False
    changed = False
    for tool_delta in tool_deltas:
        function = tool_delta.get("function") if isinstance(tool_delta, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        if isinstance(name, str) and name in facts.tool_renames:
            index = tool_delta.get("index")
            function["name"] = client_tool_name(name, index if isinstance(index, int) else 0, facts, log)
            changed = True
    return changed


def deliver_call(
    name: str,
    upstream_id: Any,
    arguments: Any,
    position: int,
    truncated: bool,
    facts: RequestFacts,
    policy: Policy,
    log: RepairLog,
) -> dict[str, Any] | None:
    """The call to deliver, or None: deliver it exactly as the upstream sent it. That is the case
    for a call whose arguments were cut off (never completed into a runnable call) and for one
    whose repair raised (an exception costs the repair, never the call)."""
    if truncated:
        log.add("args.truncated", position, name, arguments[-200:] if isinstance(arguments, str) else arguments)
        return None
    before = len(log)
    try:
        return finalize_call(name, upstream_id, arguments, position, facts, policy, log)
    except Exception as exc:  # a schema that cannot be resolved, arguments nested too deep, a bug
        del log.entries[before:]
        log.add("call.repair_failed", position, name, f"{type(exc).__name__}: {exc}"[:300])
        return None


# The output was cut short: its calls may be incomplete and its finish_reason is never changed.
CUT_FINISH_REASONS = frozenset({"length", "content_filter"})


def is_truncated(arguments: Any, cut: bool) -> bool:
    """Whole arguments (JSON responses) that did not complete: no closed JSON value at their
    start. Empty ones count only when the output was cut; else they mean "no arguments"."""
    if arguments_closed(arguments):
        return False
    return cut or not (arguments is None or (isinstance(arguments, str) and not arguments.strip()))


_ENGINE_STOPS = frozenset({"eos", "end", "end_turn", "eos_token"})


def fix_finish_reason(
    reason: Any, has_tool_calls: bool, position: int | None, log: RepairLog, policy: Policy, truncated: bool = False
) -> Any:
    """`tool_calls` whenever calls were delivered, `stop` for `tool_calls` without any call and
    for engine-specific end reasons (`kimi_finish=fix`). Never changed: `length` and
    `content_filter`. A call whose arguments never closed makes it `length`, whatever the
    upstream said: vLLM reports a call cut by `max_tokens` as `tool_calls` (vllm #47761), and a
    client that partial-parses arguments would run it."""
    if policy.finish != "fix" or reason in CUT_FINISH_REASONS:
        return reason
    if truncated:
        log.add("finish_reason.cut_call", position, reason, "length")
        return "length"
    if has_tool_calls:
        fixed, kind = "tool_calls", "finish_reason.fixed"
    elif reason == "tool_calls":
        # SGLang's failed parse, vLLM's empty `tool_calls: []` deltas (vllm #54701): clients
        # would wait for a call that never comes
        fixed, kind = "stop", "finish_reason.no_calls"
    elif reason in _ENGINE_STOPS:
        fixed, kind = "stop", "finish_reason.fixed"
    else:
        return reason
    if fixed != reason:
        log.add(kind, position, reason, fixed)
    return fixed
