"""OpenRouter as an upstream (wire/servers/openrouter.py): its flavor, Moonshot's rules for its Kimi models,
reasoning kept the way it takes it back. Wire shapes from OpenRouterTeam/ai-sdk-provider
(src/chat/schemas.ts, src/schemas/reasoning-details.ts) and openrouter.ai/docs."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kimiwire.mitm.retry import retry_error_message
from kimiwire.wire.codecs.sse import SSEDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.request.moonshot_contract import TOOL_NAME
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.retry.policy import UpstreamError, in_band_error
from kimiwire.wire.servers.policy import Flavor, Policy, resolve_flavor

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


def test_k27_code_is_never_sent_thinking_off() -> None:
    sent, kinds = _repaired({"model": "moonshotai/kimi-k2.7-code", "thinking": {"type": "disabled"}, "messages": []})
    assert "thinking" not in sent and "reasoning" not in sent and "field.thinking" in kinds


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
    assert sent["messages"][5]["reasoning"] == "second plan" and "reasoning_details" not in sent["messages"][5]


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


# -- answers: OpenRouter's reasoning_details stream and JSON shapes --------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "gen-1",
        "provider": "Moonshot AI",
        "model": "moonshotai/kimi-k2.6",
        "object": "chat.completion.chunk",
        "created": 1,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _detail(text: str) -> dict[str, Any]:
    return {"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}


SUMMARY = {"type": "reasoning.summary", "summary": " So."}
ENCRYPTED = {"type": "reasoning.encrypted", "data": "e1"}

# As OpenRouter streams a reasoning model: `reasoning` beside `reasoning_details` (ai-sdk-provider
# src/chat/schemas.ts), and deltas carrying only the details, which its SDK reads as reasoning too.
DETAILS_STREAM = [
    _chunk({"role": "assistant", "content": "", "reasoning": "Let me ", "reasoning_details": [_detail("Let me ")]}),
    _chunk({"role": "assistant", "content": "", "reasoning_details": [_detail("think.")]}),
    _chunk(
        {"role": "assistant", "content": "", "reasoning_details": [{"type": "reasoning.summary", "summary": " So."}]}
    ),
    _chunk({"role": "assistant", "content": "", "reasoning_details": [{"type": "reasoning.encrypted", "data": "e1"}]}),
    _chunk({"role": "assistant", "content": "Hello"}),
    _chunk({"role": "assistant", "content": ""}, "stop"),
    b"data: [DONE]\n\n",
]


def _stream_through(events: list[bytes], facts: RequestFacts, policy: Policy = OPENROUTER) -> list[dict[str, Any]]:
    repairer = StreamRepairer(facts, policy)
    out = [piece for event in events for piece in repairer.feed(event)] + repairer.end()
    decoder = SSEDecoder()
    return [
        orjson.loads(e.data) for e in decoder.feed(b"".join(out)) + decoder.end() if e.data not in (None, b"[DONE]")
    ]


@pytest.mark.parametrize("reasoning_field", ["keep", "reasoning_content"])
def test_streamed_reasoning_details_reach_the_client_as_its_reasoning(reasoning_field: str) -> None:
    policy = Policy.build(Flavor.OPENROUTER, reasoning_field=reasoning_field)
    chunks = _stream_through(DETAILS_STREAM, RequestFacts(stream=True), policy)
    key = "reasoning" if reasoning_field == "keep" else "reasoning_content"
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    assert "".join(d.get(key) or "" for d in deltas) == "Let me think. So."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    # the details go on as they came, for clients that read them (OpenRouter's own SDKs)
    assert [d["reasoning_details"][0]["type"] for d in deltas if "reasoning_details" in d] == [
        "reasoning.text",
        "reasoning.text",
        "reasoning.summary",
        "reasoning.encrypted",
    ]


def test_json_reasoning_details_reach_the_client_as_its_reasoning() -> None:
    body = {
        "id": "gen-2",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning_details": [_detail("Plan"), {"type": "reasoning.encrypted", "data": "e1"}],
                },
                "finish_reason": "stop",
            }
        ],
    }
    repaired, log, why = repair_completion_body(orjson.dumps(body), RequestFacts(), OPENROUTER)
    assert why is None and repaired is not None
    message = orjson.loads(repaired)["choices"][0]["message"]
    assert (
        message["reasoning"] == "Plan"
        and message["reasoning_details"] == body["choices"][0]["message"]["reasoning_details"]
    )
    assert "reasoning.from_details" in [entry.kind for entry in log.entries]


def test_passthrough_calls_of_renamed_tools_reach_the_client_under_its_name() -> None:
    facts = RequestFacts(stream=True, tools={"github.create_issue": {}}, tools_declared=True)
    facts.tool_renames = {"github_create_issue": "github.create_issue"}
    policy = Policy.build(Flavor.MOONSHOT, tool_stream="passthrough")
    first = {"index": 0, "id": "functions.github_create_issue:0", "type": "function"}
    events = [
        _chunk(
            {
                "role": "assistant",
                "tool_calls": [{**first, "function": {"name": "github_create_issue", "arguments": ""}}],
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"title": "x"}'}}]}),
        _chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
    chunks = _stream_through(events, facts, policy)
    names = [
        call["function"].get("name")
        for c in chunks
        for call in (c["choices"][0]["delta"].get("tool_calls") or [] if c.get("choices") else [])
        if call.get("function", {}).get("name")
    ]
    assert names == ["github.create_issue"]


# -- errors OpenRouter wraps ------------------------------------------------------------------------

# openrouter.ai/docs/api-reference/errors: `error.metadata.raw` is the provider's own error.
WRAPPED = {
    "error": {
        "code": 429,
        "message": "Provider returned error",
        "metadata": {
            "raw": '{"error":{"message":"The engine is currently overloaded, please try again later",'
            '"type":"engine_overloaded_error"}}',
            "provider_name": "Moonshot AI",
        },
    },
    "user_id": "u1",
}


def test_wrapped_provider_error_is_read_with_its_words() -> None:
    error = UpstreamError.parse(orjson.dumps(WRAPPED))
    assert error is not None and error.retryable and error.provider == "Moonshot AI"
    assert "engine is currently overloaded" in error.text() and "[Moonshot AI]" in error.text()
    assert "engine is currently overloaded" in retry_error_message(orjson.dumps(WRAPPED), 429)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**WRAPPED, "error": {**WRAPPED["error"], "code": 502}}, 502),
        (
            {
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ""},
                        "finish_reason": "error",
                        "error": {"code": 503, "message": "Provider unavailable"},
                    }
                ]
            },
            503,
        ),
        ({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}, None),
        ({"error": {"code": 400, "message": "bad"}}, 400),
    ],
)
def test_in_band_errors_in_a_200(body: dict[str, Any], code: int | None) -> None:
    error = in_band_error(orjson.dumps(body))
    assert (error.code if error is not None else None) == code
