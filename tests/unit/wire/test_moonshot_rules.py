"""The Moonshot request rules (wire/request/moonshot_rules.py, mfjs_rewrite.py) against the
simulator's validator (sim/moonshot_validator.py): requests as harnesses send them are refused
direct and accepted after the repair, with the client's intent kept; and any request the validator
accepts direct is still accepted after the repair (hypothesis)."""

import copy
import json
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.sim.moonshot_validator import moonshot_refusal
from kimiwire.wire.request.mfjs import schema_refusal
from kimiwire.wire.request.mfjs_rewrite import moonshot_schema
from kimiwire.wire.request.moonshot_rules import INTERRUPTED_RESULT
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.moonshot_requests import HARNESS_REQUESTS

MOON = Policy.build(Flavor.MOONSHOT)
MCP = json.loads((Path(__file__).parents[2] / "fixtures" / "mcp_tool_sets.json").read_text())


def repaired(body, policy=MOON):
    result = repair_request_body(orjson.dumps(body), policy)
    return (orjson.loads(result.body) if result.body is not None else copy.deepcopy(body)), result


def tool(name, parameters=None):
    return {
        "type": "function",
        "function": {"name": name, "description": "d", "parameters": parameters or {"type": "object"}},
    }


def call(call_id, name, arguments="{}"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def loops(n, reasoning=lambda k: f"r{k}"):
    """n tool loops, each ending in a final answer, as a client that keeps every reasoning sends them."""
    messages = []
    for k in range(n):
        messages.append({"role": "user", "content": f"task {k}"})
        assistant = {"role": "assistant", "content": "", "tool_calls": [call(f"functions.read:{k}", "read")]}
        if reasoning(k) is not None:
            assistant["reasoning_content"] = reasoning(k)
        messages += [assistant, {"role": "tool", "tool_call_id": f"functions.read:{k}", "content": f"file {k}"}]
        messages.append({"role": "assistant", "content": f"done {k}", "reasoning_content": f"f{k}"})
    messages.append({"role": "user", "content": "next"})
    return messages


# -- reasoning on every tool-call turn ----------------------------------------------------------


def test_three_loops_keep_every_reasoning_direct_and_through_kimiwire():
    body = {"model": "kimi-k2.6", "messages": loops(3), "tools": [tool("read")]}
    assert moonshot_refusal(body) is None
    out, _ = repaired(body)
    assert moonshot_refusal(out) is None  # the `loop` policy used to strip loops 1 and 2: a 400
    assert [m["reasoning_content"] for m in out["messages"] if m.get("tool_calls")] == ["r0", "r1", "r2"]


def test_missing_and_empty_reasoning_in_every_loop_get_a_space():
    body = {"model": "kimi-k2.6", "messages": loops(3, lambda k: [None, "", "r2"][k]), "tools": [tool("read")]}
    assert moonshot_refusal(body).endswith("at index 1")
    out, result = repaired(body)
    assert moonshot_refusal(out) is None
    assert [m["reasoning_content"] for m in out["messages"] if m.get("tool_calls")] == [" ", " ", "r2"]
    assert result.log.kinds().count("reasoning.placeholder") == 2


@pytest.mark.parametrize("flavor", [Flavor.SELFHOSTED, Flavor.DEEPINFRA])
def test_other_flavors_keep_todays_policy(flavor):
    body = {"model": "kimi-k2.6", "messages": loops(3), "tools": [tool("read")]}
    out, _ = repaired(body, Policy.build(flavor))
    kept = [m.get("reasoning_content") for m in out["messages"] if m.get("tool_calls")]
    assert kept == [None, None, None]  # (the current loop is empty: the last answer came after them)


# -- thinking and effort per family --------------------------------------------------------------


def test_boolean_thinking_becomes_the_object_form():
    out, result = repaired({"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}], "thinking": True})
    assert out["thinking"] == {"type": "enabled"} and "compat.thinking" in result.log.kinds()


def test_k27_code_never_gets_thinking_disabled():
    for extra in ({"reasoning_effort": "none"}, {"thinking": {"type": "disabled"}}):
        body = {"model": "kimi-k2.7-code", "messages": [{"role": "user", "content": "hi"}], **extra}
        out, result = repaired(body)
        assert moonshot_refusal(out) is None
        assert "thinking" not in out and "reasoning_effort" not in out, result.log.kinds()


@pytest.mark.parametrize(
    ("asked", "sent"),
    [
        ("low", "low"),
        ("high", "high"),
        ("max", "max"),
        ("minimal", "low"),
        ("none", "low"),
        ("medium", "high"),
        ("xhigh", "max"),
    ],
)
def test_k3_keeps_its_effort_mapping_openai_values_to_the_nearest(asked, sent):
    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": asked}
    out, _ = repaired(body)
    assert out["reasoning_effort"] == sent and "thinking" not in out


def test_k3_never_gets_thinking_beside_its_effort():
    body = {
        "model": "kimi-k3",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "low",
        "thinking": {"type": "enabled"},
    }
    assert moonshot_refusal(body) == "cannot specify both 'thinking' and 'reasoning_effort'"
    out, _ = repaired(body)
    assert moonshot_refusal(out) is None and out["reasoning_effort"] == "low"


# -- tool_choice per family --------------------------------------------------------------------

NAMED = {"type": "function", "function": {"name": "read"}}


@pytest.mark.parametrize(
    ("model", "choice", "sent_choice", "sent_thinking"),
    [
        ("kimi-k2.6", "required", "required", {"type": "disabled"}),
        ("kimi-k2.5", NAMED, NAMED, {"type": "disabled"}),
        ("kimi-k2.7-code", "required", "auto", None),
        ("kimi-k2.7-code", NAMED, NAMED, None),
        ("kimi-k3", NAMED, "auto", None),
        ("kimi-k3", "required", "required", None),
    ],
)
def test_forced_tool_choice(model, choice, sent_choice, sent_thinking):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "read a"}],
        "tools": [tool("read")],
        "tool_choice": choice,
    }
    out, _ = repaired(body)
    assert moonshot_refusal(out) is None
    assert out["tool_choice"] == sent_choice and out.get("thinking") == sent_thinking


# -- tool schemas --------------------------------------------------------------------------------

REFUSED_SCHEMAS = {
    "type beside anyOf": (
        {"type": "object", "properties": {"q": {"type": "string", "anyOf": [{"minLength": 1}, {"enum": ["x"]}]}}},
        [{"q": "a"}, {"q": ""}, {"q": "x"}, {"q": 3}],
    ),
    "type beside $ref": (
        {
            "type": "object",
            "properties": {"p": {"type": "object", "$ref": "#/$defs/P"}},
            "$defs": {"P": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        },
        [{"p": {"a": 1}}, {"p": {"a": "1"}}, {"p": 2}],
    ),
    "keyword beside $ref": (
        {
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/P", "default": {"a": 1}}},
            "$defs": {"P": {"type": "object", "default": {}}},
        },
        [{"p": {"a": 1}}, {"p": 2}],
    ),
    "#/definitions": (
        {"type": "object", "properties": {"p": {"$ref": "#/definitions/P"}}, "definitions": {"P": {"type": "string"}}},
        [{"p": "a"}, {"p": 1}],
    ),
    "boolean sub-schemas": (
        {"type": "object", "properties": {"any": True, "list": {"type": "array", "items": True}}},
        [{"any": 1}, {"list": [1, "a"]}, {"list": 3}],
    ),
    "tuple items": (
        {
            "type": "object",
            "properties": {"pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}},
        },
        [{"pair": ["a", 1]}, {"pair": [1, "a"]}, {"pair": ["a"]}],
    ),
    "required naming an undefined property": (
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]},
        [{"a": "x"}, {"a": "x", "b": 1}, {"b": 1}],
    ),
    "several types with a default": (
        {"type": "object", "properties": {"n": {"type": ["string", "null"], "default": None, "minLength": 2}}},
        [{"n": None}, {"n": "ab"}, {"n": "a"}, {"n": 1}],
    ),
    "enum without a type": (
        {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}},
        [{"k": "a"}, {"k": "c"}],
    ),
}


@pytest.mark.parametrize("name", list(REFUSED_SCHEMAS))
def test_refused_schemas_are_rewritten_with_the_same_meaning(name):
    schema, instances = REFUSED_SCHEMAS[name]
    assert schema_refusal(schema) is not None
    rewritten, changes = moonshot_schema(schema)
    assert schema_refusal(rewritten) is None and changes
    # Tuple `items` is draft-07 (the client's dialect); the rewrite is read as 2020-12 (`prefixItems`).
    original = (jsonschema.Draft7Validator if name == "tuple items" else jsonschema.Draft202012Validator)(schema)
    for instance in instances:
        same = jsonschema.Draft202012Validator(rewritten).is_valid(instance) == original.is_valid(instance)
        assert same, (name, instance, rewritten)


@pytest.mark.parametrize("server", list(MCP))
def test_real_mcp_servers_schemas(server):
    tools = MCP[server]["tools"]
    refused = [t for t in tools if schema_refusal(t["inputSchema"]) is not None]
    for t in tools:
        rewritten = moonshot_schema(t["inputSchema"])
        if t in refused:
            assert rewritten is not None and schema_refusal(rewritten[0]) is None, t["name"]
        else:
            assert rewritten is None  # a schema Moonshot takes is sent as it came
    assert len(refused) == {"ms-365": 7}.get(server, 0)


def test_answers_are_still_checked_against_the_clients_own_schema():
    schema = REFUSED_SCHEMAS["tuple items"][0]
    body = {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "x"}], "tools": [tool("pair", schema)]}
    out, result = repaired(body)
    assert out["tools"][0]["function"]["parameters"] != schema
    assert result.facts.tools["pair"] == schema and "compat.tool_schema" in result.log.kinds()


# -- tool names ----------------------------------------------------------------------------------


def test_dotted_mcp_names_are_renamed_everywhere_and_mapped_back_in_the_facts():
    body = {
        "model": "kimi-k2.6",
        "thinking": {"type": "disabled"},
        "messages": [
            {"role": "user", "content": "make an issue"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call("functions.github.create_issue:0", "github.create_issue")],
            },
            {
                "role": "tool",
                "tool_call_id": "functions.github.create_issue:0",
                "name": "github.create_issue",
                "content": "ok",
            },
            {"role": "user", "content": "again"},
        ],
        "tools": [tool("github.create_issue"), tool("github_create_issue"), tool("2fa")],
        "tool_choice": {"type": "function", "function": {"name": "github.create_issue"}},
    }
    assert moonshot_refusal(body) is not None
    out, result = repaired(body)
    assert moonshot_refusal(out) is None
    names = [t["function"]["name"] for t in out["tools"]]
    assert names[1] == "github_create_issue" and len(set(names)) == 3  # no collision with a real name
    assert out["tool_choice"]["function"]["name"] == names[0] == out["messages"][1]["tool_calls"][0]["function"]["name"]
    assert out["messages"][1]["tool_calls"][0]["id"] == f"functions.{names[0]}:0"
    assert result.facts.tool_renames == {names[0]: "github.create_issue", names[2]: "2fa"}


def test_more_tools_than_the_model_takes_are_refused_before_upstream():
    tools = [tool(t["name"]) for t in MCP["ms-365"]["tools"]]
    _, result = repaired({"model": "kimi-for-coding", "messages": [{"role": "user", "content": "x"}], "tools": tools})
    assert result.body is None and result.refusal == "kimiwire: Invalid request: too many tools: 188 (at most 128)"


# -- tool results in place -----------------------------------------------------------------------


def test_a_user_message_inside_the_results_moves_after_them_and_a_lost_result_gets_a_placeholder():
    messages = [
        {"role": "user", "content": "read a and b and c"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "r",
            "tool_calls": [
                call("functions.read:0", "read"),
                call("functions.read:1", "read"),
                call("functions.read:2", "read"),
            ],
        },
        {"role": "tool", "tool_call_id": "functions.read:0", "content": "a"},
        {"role": "user", "content": "(the user typed while tools ran)"},
        {"role": "system", "content": "(a harness note)"},
        {"role": "tool", "tool_call_id": "functions.read:1", "content": "b"},
    ]
    body = {"model": "kimi-k2.6", "messages": messages, "tools": [tool("read")]}
    assert "did not have response messages" in moonshot_refusal(body)
    out, result = repaired(body)
    assert moonshot_refusal(out) is None
    assert [(m["role"], m.get("tool_call_id")) for m in out["messages"][2:]] == [
        ("tool", "functions.read:0"),
        ("tool", "functions.read:1"),
        ("tool", "functions.read:2"),
        ("user", None),
        ("system", None),
    ]
    assert out["messages"][4]["content"] == INTERRUPTED_RESULT
    assert {"compat.tool_results_moved", "compat.tool_result_placeholder"} <= set(result.log.kinds())


# -- never worse than direct (request side) -------------------------------------------------------

MODELS = [
    "kimi-k2.5",
    "kimi-k2.6",
    "kimi-k2.7-code",
    "kimi-k3",
    "kimi-for-coding",
    "kimi-k2-thinking",
    "kimi-k2-0905-preview",
    "other",
]
SCHEMAS = [s for s, _ in REFUSED_SCHEMAS.values()] + [
    t["inputSchema"] for server in ("github", "filesystem") for t in MCP[server]["tools"][:6]
]


@st.composite
def requests(draw):
    body = {"model": draw(st.sampled_from(MODELS))}
    names = draw(
        st.lists(
            st.sampled_from(["read", "exec", "github.get_me", "fs-list", "9lives"]), min_size=0, max_size=4, unique=True
        )
    )
    if names:
        body["tools"] = [tool(n, draw(st.sampled_from(SCHEMAS))) for n in names]
        if draw(st.booleans()):
            body["tool_choice"] = draw(
                st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": names[0]}}])
            )
    for field, values in (
        ("thinking", [{"type": "enabled"}, {"type": "disabled"}, True, False]),
        ("reasoning_effort", ["none", "minimal", "low", "medium", "high", "xhigh", "max"]),
        ("temperature", [0.2, 0.6, 1.0]),
        ("top_p", [0.95, 0.5]),
        ("n", [1, 2]),
    ):
        if draw(st.booleans()):
            body[field] = draw(st.sampled_from(values))
    messages = [{"role": "user", "content": "task"}]
    for k in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(names or ["read"]))
        assistant = {"role": "assistant", "content": "", "tool_calls": [call(f"functions.{name}:{k}", name)]}
        reasoning = draw(st.sampled_from([None, "", " ", "because"]))
        if reasoning is not None:
            assistant["reasoning_content"] = reasoning
        messages.append(assistant)
        if draw(st.integers(0, 5)):
            messages.append({"role": "tool", "tool_call_id": f"functions.{name}:{k}", "content": "ok"})
        if not draw(st.integers(0, 4)):
            messages.append({"role": "user", "content": "meanwhile"})
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": "done", "reasoning_content": "r"})
            messages.append({"role": "user", "content": "more"})
    body["messages"] = messages
    return body


@settings(max_examples=400, deadline=None)
@given(requests())
def test_any_request_moonshot_accepts_direct_is_accepted_after_kimiwire(body):
    if moonshot_refusal(body) is None:
        out, _ = repaired(body)
        assert moonshot_refusal(out) is None, out


# -- a forced tool sent as `auto` is checked to have been called ---------------------------------


def test_a_relaxed_forced_choice_is_remembered_in_the_facts():
    body = {"model": "kimi-k2.7-code", "messages": [{"role": "user", "content": "x"}], "tools": [tool("read")]}
    _, result = repaired({**body, "tool_choice": "required"})
    assert result.facts.forced_tool == "*"
    _, result = repaired({**body, "model": "kimi-k3", "tool_choice": NAMED})
    assert result.facts.forced_tool == "read"
    _, result = repaired({**body, "model": "kimi-k2.6", "tool_choice": NAMED})
    assert result.facts.forced_tool is None  # thinking turned off instead: the upstream forces it


def test_the_turn_verdict_on_a_forced_tool():
    from kimiwire.wire.facts import RequestFacts
    from kimiwire.wire.retry.turn_gate import TurnSeen, judge

    checks = frozenset({"forced_tool"})
    text = TurnSeen(content=True, finish_reasons=["stop"])
    assert judge(text, RequestFacts(forced_tool="*"), checks).kind == "forced_tool"
    assert judge(text, RequestFacts(), checks) is None
    other = TurnSeen(calls=[("exec", "{}")], finish_reasons=["tool_calls"])
    assert judge(other, RequestFacts(forced_tool="read"), checks).kind == "forced_tool"
    assert judge(other, RequestFacts(forced_tool="*"), checks) is None
    assert judge(TurnSeen(content=True, finish_reasons=["length"]), RequestFacts(forced_tool="*"), checks) is None


def test_the_gate_holds_content_while_a_forced_tool_is_awaited():
    from kimiwire.wire.facts import RequestFacts
    from kimiwire.wire.retry.turn_gate import TurnGate

    def event(delta, finish=None):
        chunk = {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    gate = TurnGate(RequestFacts(forced_tool="*"), frozenset({"forced_tool", "empty"}), hold_calls=True)
    assert gate.feed([event({"content": "hello"}), event({}, "stop"), b"data: [DONE]\n\n"]) == []
    assert gate.verdict().kind == "forced_tool" and len(gate.discard()) == 3
    gate = TurnGate(RequestFacts(), frozenset({"forced_tool", "empty"}), hold_calls=True)
    assert len(gate.feed([event({"content": "hello"})])) == 1  # nothing forced: content proves the turn


# -- requests as harnesses send them ---------------------------------------------------------------


@pytest.mark.parametrize(("label", "body", "intent"), HARNESS_REQUESTS, ids=[h[0][:60] for h in HARNESS_REQUESTS])
def test_harness_requests_are_accepted_through_kimiwire_with_their_intent(label, body, intent):
    out, result = repaired(body)
    if result.refusal is not None:  # answered by kimiwire with a clear 400, nothing sent
        assert "too many tools" in result.refusal and moonshot_refusal(body) is not None
        return
    assert moonshot_refusal(out) is None, label
    assert intent(out), label


def test_most_harness_requests_are_refused_direct():
    refused = [label for label, body, _ in HARNESS_REQUESTS if moonshot_refusal(body) is not None]
    accepted = [label for label, body, _ in HARNESS_REQUESTS if moonshot_refusal(body) is None]
    assert len(refused) == 22 and len(HARNESS_REQUESTS) == 28, accepted
