"""OpenRouter as an upstream (wire/openrouter.py): its flavor, Moonshot's rules for its Kimi models,
reasoning kept the way it takes it back. Wire shapes from OpenRouterTeam/ai-sdk-provider
(src/chat/schemas.ts, src/schemas/reasoning-details.ts) and openrouter.ai/docs."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kimiwire.wire.policy import Flavor, Policy, resolve_flavor
from kimiwire.wire.request.moonshot_contract import TOOL_NAME
from kimiwire.wire.request.repair import repair_request_body

OPENROUTER = Policy.build(Flavor.OPENROUTER)


def _repaired(body: dict[str, Any], policy: Policy = OPENROUTER) -> tuple[dict[str, Any], list[str]]:
    result = repair_request_body(orjson.dumps(body), policy)
    sent = orjson.loads(result.body) if result.body is not None else body
    return sent, [entry.kind for entry in result.log.entries]


def _call(call_id: str, name: str = "github.create_issue") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def _tool(name: str = "github.create_issue") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def _two_loops(first_turn: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "file it"},
        {"role": "assistant", "content": None, "tool_calls": [_call("c1")], **first_turn},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "filed"},
        {"role": "user", "content": "another"},
        {"role": "assistant", "content": None, "reasoning_content": "second plan", "tool_calls": [_call("c2")]},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    ]


@pytest.mark.parametrize(
    ("host", "flavor"),
    [
        ("openrouter.ai", Flavor.OPENROUTER),
        ("OpenRouter.ai.", Flavor.OPENROUTER),
        ("notopenrouter.ai", Flavor.SELFHOSTED),
    ],
)
def test_openrouter_host_is_its_own_flavor(host: str, flavor: Flavor) -> None:
    assert resolve_flavor("auto", host) is flavor


def test_kimi_on_openrouter_gets_moonshots_rules_and_reasoning_as_openrouter_takes_it() -> None:
    details = [{"type": "reasoning.text", "text": "first plan", "format": "unknown", "index": 0}]
    body = {
        "model": "moonshotai/kimi-k2.6",
        "temperature": 0.2,
        "tools": [_tool()],
        "messages": _two_loops({"reasoning_details": details}),
    }
    sent, kinds = _repaired(body)
    # Moonshot's rules: the dotted MCP name renamed, pinned sampling dropped.
    assert all(TOOL_NAME.match(tool["function"]["name"]) for tool in sent["tools"])
    assert "temperature" not in sent and "compat.fixed_sampling" in kinds
    first, second = sent["messages"][1], sent["messages"][5]
    # Every tool-call turn keeps its own reasoning (Moonshot checks them all while thinking), under
    # OpenRouter's `reasoning` with its details: the client's own details as they came.
    assert first["reasoning"] == "first plan" and first["reasoning_details"] == details
    assert second["reasoning"] == "second plan" and "reasoning_content" not in second
    assert second["reasoning_details"] == [
        {"type": "reasoning.text", "text": "second plan", "format": "unknown", "index": 0}
    ]


def test_tool_call_turn_without_reasoning_gets_the_placeholder_unless_reasoning_is_off() -> None:
    body = {"model": "moonshotai/kimi-k2.6", "messages": _two_loops({})}
    sent, kinds = _repaired(body)
    assert sent["messages"][1]["reasoning"] == " " and "reasoning.placeholder" in kinds
    off, _ = _repaired({**body, "reasoning": {"enabled": False}})
    assert "reasoning" not in off["messages"][1]


def test_thinking_switch_becomes_openrouters_reasoning_object() -> None:
    sent, _ = _repaired({"model": "moonshotai/kimi-k2.5", "thinking": {"type": "disabled"}, "messages": []})
    assert sent["reasoning"] == {"enabled": False} and "thinking" not in sent
    kept, _ = _repaired(
        {"model": "moonshotai/kimi-k2.5", "enable_thinking": True, "reasoning": {"effort": "low"}, "messages": []}
    )
    assert kept["reasoning"] == {"effort": "low"}  # the client's own setting wins


def test_forced_tool_choice_on_k26_turns_thinking_off_openrouters_way() -> None:
    body = {
        "model": "moonshotai/kimi-k2.6",
        "tools": [_tool("read")],
        "tool_choice": "required",
        "messages": [{"role": "user", "content": "read"}],
    }
    sent, kinds = _repaired(body)
    assert sent["tool_choice"] == "required" and sent["reasoning"] == {"enabled": False}
    assert "thinking" not in sent and "compat.forced_tool_choice" in kinds


def test_other_models_on_openrouter_are_left_to_openrouter() -> None:
    body = {
        "model": "anthropic/claude-sonnet-4.5",
        "temperature": 0.2,
        "reasoning_effort": "low",
        "tools": [_tool()],
        "messages": _two_loops({}),
    }
    sent, kinds = _repaired(body)
    assert sent["temperature"] == 0.2 and sent["reasoning_effort"] == "low"
    assert sent["tools"][0]["function"]["name"] == "github.create_issue"
    assert not any(kind.startswith("compat.") for kind in kinds)
    assert "reasoning" not in sent["messages"][1]  # no placeholder: not Moonshot behind


def test_strip_takes_details_with_the_text() -> None:
    details = [{"type": "reasoning.text", "text": "old plan"}]
    body = {
        "model": "moonshotai/kimi-k2.6",
        "messages": _two_loops({"reasoning": "old plan", "reasoning_details": details}),
    }
    policy = Policy.build(Flavor.OPENROUTER, reasoning="strip")
    sent, _ = _repaired({**body, "thinking": {"type": "disabled"}}, policy)
    first = sent["messages"][1]
    assert "reasoning" not in first and "reasoning_details" not in first
