"""A tool call the model made, finalized for the client: canonical id, repaired arguments,
and checked (not altered) against the tools the request declared."""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.arguments import fix_response_arguments, unrepaired_arguments
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.policy import Policy
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.tool_ids import canonical_id
from kimiwire.wire.response.schema_check import schema_violation


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
    fixed = fix_response_arguments(arguments) if policy.arguments == "repair" else unrepaired_arguments(arguments)
    if fixed.kind is not None:
        log.add(fixed.kind, position, arguments, fixed.text)
    if not name:
        log.add("tool.nameless", position, upstream_id, None)
    elif facts.tools_declared and name not in facts.tools:
        log.add("tool.undeclared", position, name, sorted(facts.tools))
    elif fixed.value is not None and (schema := facts.tools.get(name)):
        problem = schema_violation(schema, fixed.value)
        if problem:
            log.add("args.schema_violation", position, orjson.loads(fixed.text), problem)
    if policy.tool_ids == "canonical" or not upstream_id:
        call_id = canonical_id(name, facts.history_tool_calls + position)
        if upstream_id != call_id:
            log.add("ids.response", position, upstream_id, call_id)
    else:
        call_id = upstream_id
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": fixed.text}}


def fix_finish_reason(reason: Any, has_tool_calls: bool, position: int | None, log: RepairLog, policy: Policy) -> Any:
    """`tool_calls` whenever calls were emitted; engine-specific end reasons become `stop`
    (`kimi_finish=fix`)."""
    if policy.finish != "fix":
        return reason
    fixed = reason
    if has_tool_calls:
        fixed = "tool_calls"
    elif reason in ("eos", "end", "end_turn", "eos_token"):
        fixed = "stop"
    elif reason == "tool_calls":
        fixed = "stop"  # SGLang: `tool_calls` with no usable call; clients would wait for a call
    if fixed != reason:
        log.add("finish_reason.fixed", position, reason, fixed)
    return fixed
