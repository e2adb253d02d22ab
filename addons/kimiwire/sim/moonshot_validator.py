"""A request validator that refuses what Moonshot's API refuses, with its own 400 messages.

Selected with the simulator setting `contract=moonshot`. The model-family facts come from the
contract table (wire/request/moonshot_contract.py, each row with its sources); the checks are
written here independently of kimiwire's repairs. Tool schemas are checked by the port of
Moonshot's own validator, MoonshotAI/walle (wire/request/mfjs.py, tested on walle's cases).
"""

from __future__ import annotations

from typing import Any

from kimiwire.wire.request.mfjs import schema_refusal
from kimiwire.wire.request.moonshot_contract import TOOL_NAME, MoonshotError, contract_for


def _number(value: float) -> str:
    return f"{value:g}"


def _empty(content: Any) -> bool:
    if content is None:
        return True
    if isinstance(content, str):
        return not content.strip()
    if isinstance(content, list):
        return not content
    return False


def moonshot_refusal(body: dict[str, Any]) -> str | None:
    """The message of the first 400 Moonshot's API answers this request with, or None."""
    contract = contract_for(body.get("model"))
    messages = given if isinstance(given := body.get("messages"), list) else []
    if any(isinstance(m, dict) and m.get("role") == "developer" for m in messages):
        return MoonshotError.DEVELOPER_ROLE
    thinking = body.get("thinking")
    if "thinking" in body and not isinstance(thinking, dict):
        kind = {bool: "boolean", str: "string", int: "number", float: "number"}.get(type(thinking), "value")
        # Worded as the API words the same deserialization failure of `reasoning_effort` (new-api relay
        # kimi-k3 texts); a boolean `thinking` is refused (vercel/ai#19553), its exact text is not public.
        return (
            "Invalid request: the `thinking` field in the request (expected type object) is illegal, "
            f"and {kind} is not acceptable"
        )
    if "thinking" in body and "reasoning_effort" in body:
        return MoonshotError.THINKING_AND_EFFORT
    refuses_disabling = contract is not None and contract.refuses_disabling
    if refuses_disabling and isinstance(thinking, dict) and thinking.get("type") != "enabled":
        return MoonshotError.THINKING_ONLY_ENABLED
    thinking_on = (
        contract.thinking_on(body)
        if contract is not None
        else (isinstance(thinking, dict) and thinking.get("type") == "enabled")
    )
    if contract is not None and contract.temperature is not None and "temperature" in body:
        fixed = contract.temperature[0 if thinking_on else 1]
        if body["temperature"] != fixed:
            return MoonshotError.PINNED.format(field="temperature", value=_number(fixed))
    for field, fixed in contract.pinned if contract is not None else ():
        if field in body and body[field] != fixed:
            return MoonshotError.PINNED.format(field=field, value=_number(fixed))
    choice = body.get("tool_choice")
    if contract is not None and thinking_on and not contract.forced_choice_taken(choice):
        return MoonshotError.REQUIRED_WITH_THINKING if choice == "required" else MoonshotError.NAMED_WITH_THINKING
    tools = given if isinstance(given := body.get("tools"), list) else []
    if contract is not None and contract.max_tools is not None and len(tools) > contract.max_tools:
        return MoonshotError.TOO_MANY_TOOLS.format(count=len(tools), limit=contract.max_tools)
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            return MoonshotError.TOOL_NAME
        if "parameters" in function:
            refused = schema_refusal(function["parameters"])
            if refused is not None:
                return MoonshotError.SCHEMA.format(
                    where="tools.function.parameters", path=refused.where, detail=refused.detail
                )
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        refused = schema_refusal(response_format["json_schema"].get("schema"))
        if refused is not None:
            return MoonshotError.SCHEMA.format(
                where="response_format.json_schema.schema", path=refused.where, detail=refused.detail
            )
    return _history_refusal(messages, thinking_on)


def _history_refusal(messages: list[Any], thinking_on: bool) -> str | None:
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        if not calls:
            if _empty(message.get("content")):
                return MoonshotError.EMPTY_ASSISTANT.format(index=index)
            continue
        if thinking_on:
            reasoning = message.get("reasoning_content")
            if not isinstance(reasoning, str) or not reasoning:
                return MoonshotError.REASONING_MISSING.format(index=index)
        if index == len(messages) - 1:
            continue  # a partial assistant turn to continue: no results yet
        wanted = [c.get("id") for c in calls if isinstance(c, dict)]
        answered = set()
        for follower in messages[index + 1 :]:
            if not isinstance(follower, dict) or follower.get("role") != "tool":
                break
            answered.add(follower.get("tool_call_id"))
        missing = [str(i) for i in wanted if i not in answered]
        if missing:
            return MoonshotError.RESULTS_NOT_FOLLOWING.format(ids=", ".join(missing))
    return None
