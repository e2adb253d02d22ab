"""The simulator's Moonshot validator (`contract=moonshot`) against its sources: MoonshotAI/walle's
own test cases (tests/fixtures/walle, MIT, from walle 196bb0c testdata/validator_cases), the error
bodies in vercel/ai packages/moonshotai fixtures and the 400s quoted in public reports."""

import json
from pathlib import Path

import pytest
from kimiwire.sim.moonshot_validator import moonshot_refusal
from kimiwire.sim.settings import SimSettings
from kimiwire.wire.request.mfjs import schema_refusal
from kimiwire.wire.request.moonshot_contract import contract_for

WALLE = Path(__file__).parents[2] / "fixtures" / "walle"
# The checks this validator makes (walle's strict level); walle's own invalid cases that expect one
# of these messages must be refused.
STRICT_CHECKS = (
    "anyOf must be an array",
    "schema in anyOf must be an object",
    "type should be defined in anyOf",
    "$ref must be a string",
    "references must start with #/$defs/",
    "required must be an array",
    "items in required array must be strings",
    "is not defined in properties",
    "items must be an object",
    "properties must be an object",
    "additionalProperties must be a boolean or an object",
    "enum must be an array",
    "enum array cannot be empty",
    "does not match any type",
    "invalid type",
    "type array cannot be empty",
)


def _cases(name):
    return [json.loads(line) for line in (WALLE / name).read_text().splitlines() if line.strip()]


def test_every_schema_walle_accepts_is_accepted():
    cases = _cases("valid.jsonl")
    assert len(cases) > 200
    refused = [
        (c["suite"], str(schema_refusal(json.loads(c["schema"]))))
        for c in cases
        if schema_refusal(json.loads(c["schema"]))
    ]
    assert refused == []


def test_walle_refusals_of_the_checked_kinds_are_refused():
    checked = [
        c for c in _cases("invalid.jsonl") if not c.get("unmarshal") and any(s in c["expect"] for s in STRICT_CHECKS)
    ]
    assert len(checked) > 30
    for case in checked:
        assert schema_refusal(json.loads(case["schema"])) is not None, case


BAD_NAME = (
    "Invalid request: function name is invalid, must start with a letter and can contain letters, numbers, "
    "underscores, and dashes"
)


def _tool(parameters, name="run"):
    return {"type": "function", "function": {"name": name, "description": "d", "parameters": parameters}}


def _body(model="kimi-k2.6", **fields):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        # Claude Code's actor tool, as quoted with its prod request id in a public harness test.
        (
            {"type": "object", "properties": {"operation": {"type": "object", "anyOf": [{"type": "object"}]}}},
            "Invalid request: tools.function.parameters is not a valid moonshot flavored json schema, details: "
            "<At path 'properties.operation': when using anyOf, type should be defined in anyOf items instead of "
            "the parent schema>",
        ),
        # Xcode's XcodeMV tool (public report): an object typed property with string enum values.
        (
            {"type": "object", "properties": {"operation": {"type": "object", "enum": ["move", "copy"]}}},
            "Invalid request: tools.function.parameters is not a valid moonshot flavored json schema, details: "
            "<At path 'properties.operation.enum': enum value (move) does not match any type in [object]>",
        ),
        # cua-driver's parse_visual_regions (yetone/magpie#886): an enum without a type.
        (
            {
                "type": "object",
                "properties": {
                    "options": {
                        "type": "object",
                        "properties": {
                            "kinds": {"anyOf": [{"type": "array", "items": {"enum": ["a"]}}, {"type": "null"}]}
                        },
                    }
                },
            },
            "Invalid request: tools.function.parameters is not a valid moonshot flavored json schema, details: "
            "<At path 'properties.options.properties.kinds.anyOf.items': type is not defined>",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "object", "$ref": "#/$defs/A"}},
                "$defs": {"A": {"type": "object"}},
            },
            "Invalid request: tools.function.parameters is not a valid moonshot flavored json schema, details: "
            "<At path 'properties.a': when using $ref, type should be defined in the referenced schema instead of the "
            "parent schema>",
        ),
    ],
)
def test_tool_schema_refusals_read_as_moonshot_sends_them(parameters, message):
    assert moonshot_refusal(_body(tools=[_tool(parameters)])) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            _body("kimi-k2.7-code", thinking={"type": "disabled"}),
            "invalid thinking: only type=enabled is allowed for this model",
        ),
        (
            _body("kimi-k2.6", tool_choice="required", tools=[_tool({"type": "object"})]),
            "tool_choice 'required' is incompatible with thinking enabled",
        ),
        (
            _body(
                "kimi-k3",
                tool_choice={"type": "function", "function": {"name": "run"}},
                tools=[_tool({"type": "object"})],
            ),
            "tool_choice 'specified' is incompatible with thinking enabled",
        ),
        (_body("kimi-k3", temperature=0.2), "invalid temperature: only 1 is allowed for this model"),
        (
            _body("kimi-k2.6", temperature=0.2, thinking={"type": "disabled"}),
            "invalid temperature: only 0.6 is allowed for this model",
        ),
        (_body("kimi-k3", n=2), "invalid n: only 1 is allowed for this model"),
        (_body("kimi-k2.6", top_p=0.5), "invalid top_p: only 0.95 is allowed for this model"),
        (
            _body("kimi-k2.6", thinking={"type": "enabled"}, reasoning_effort="high"),
            "cannot specify both 'thinking' and 'reasoning_effort'",
        ),
        (
            _body(tools=[_tool({"type": "object"}, name="github.create_issue")]),
            BAD_NAME,
        ),
        (
            _body(tools=[_tool({"type": "object"}, name="2fa")]),
            BAD_NAME,
        ),
        (
            _body("kimi-for-coding", tools=[_tool({"type": "object"}, name=f"t{i}") for i in range(129)]),
            "Invalid request: too many tools: 129 (at most 128)",
        ),
    ],
)
def test_request_refusals(body, message):
    assert moonshot_refusal(body) == message


def _loop(reasoning):
    call = {"id": "functions.read:0", "type": "function", "function": {"name": "read", "arguments": "{}"}}
    assistant = {"role": "assistant", "content": "", "tool_calls": [call]}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    return [
        {"role": "user", "content": "read a"},
        assistant,
        {"role": "tool", "tool_call_id": "functions.read:0", "content": "x"},
    ]


@pytest.mark.parametrize("reasoning", [None, ""])
def test_a_tool_call_turn_without_reasoning_is_refused_with_thinking_on(reasoning):
    body = {"model": "kimi-k2.6", "messages": _loop(reasoning)}
    assert moonshot_refusal(body) == (
        "thinking is enabled but reasoning_content is missing in assistant tool call message at index 1"
    )
    assert moonshot_refusal({**body, "thinking": {"type": "disabled"}}) is None


def test_one_space_of_reasoning_is_accepted():
    assert moonshot_refusal({"model": "kimi-k2.6", "messages": _loop(" ")}) is None


def test_a_message_between_a_call_and_its_result_is_refused():
    messages = _loop("r")
    messages.insert(2, {"role": "user", "content": "also b"})
    refusal = moonshot_refusal({"model": "kimi-k2.6", "messages": messages})
    assert refusal is not None and refusal.endswith("did not have response messages: functions.read:0")


def test_accepted_requests():
    tools = [_tool({"type": "object", "properties": {"q": {"anyOf": [{"type": "string"}, {"type": "null"}]}}})]
    assert moonshot_refusal(_body("kimi-k3", reasoning_effort="low", tool_choice="required", tools=tools)) is None
    assert (
        moonshot_refusal(
            _body("kimi-k2.7-code", tool_choice={"type": "function", "function": {"name": "run"}}, tools=tools)
        )
        is None
    )
    assert (
        moonshot_refusal(_body("kimi-k2.6", thinking={"type": "disabled"}, tool_choice="required", tools=tools)) is None
    )
    assert moonshot_refusal(_body("kimi-k2.6", temperature=1.0, top_p=0.95, n=1)) is None


def test_families():
    assert [
        contract_for(m).family for m in ("kimi-k2.7-code", "kimi-k2.6", "kimi-k2-5", "kimi-k3", "kimi-for-coding")
    ] == ["k2.7-code", "k2.6", "k2.5", "k3", "kimi-for-coding"]
    assert contract_for("kimi-k2-thinking").family == "k2-thinking"
    assert contract_for("kimi-k2-0905-preview").family == "k2"
    assert contract_for("gpt-4o") is None


def test_the_setting():
    assert SimSettings().with_overrides("contract=moonshot").contract == "moonshot"
    with pytest.raises(ValueError):
        SimSettings().with_overrides("contract=openai")
