"""Moonshot request compatibility: fields Moonshot answers with HTTP 400 when a
harness behind the proxy cannot tell it talks to Moonshot. Shapes from the sources in compat.py."""

import orjson
import pytest
from kimiwire.wire.request.compat import RULES
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.conversations import READ_TOOL, assistant, call, tool, user

MOON = Policy.build(Flavor.MOONSHOT)


def request(model="kimi-k2.6", messages=None, **extra):
    return {"model": model, "messages": messages or [user("hi")], "stream": True, **extra}


def repaired(payload, policy=MOON):
    result = repair_request_body(orjson.dumps(payload), policy)
    assert result.skipped is None
    return (orjson.loads(result.body) if result.body else payload), result.log


def kinds(log):
    return [k for k in log.kinds() if k.startswith("compat.")]


def test_developer_role_becomes_system():
    # pi-ai for a reasoning model: `role: "developer"` (openclaw/openclaw#24499)
    out, log = repaired(request(messages=[{"role": "developer", "content": "You are OpenClaw."}, user("hi")]))
    assert [m["role"] for m in out["messages"]] == ["system", "user"]
    assert [(e.kind, e.message_index, e.before, e.after) for e in log.entries] == [
        ("compat.developer_role", 0, "developer", "system")
    ]


def test_max_completion_tokens_becomes_max_tokens():
    out, log = repaired(request(max_completion_tokens=32000))
    assert out["max_tokens"] == 32000 and "max_completion_tokens" not in out
    assert kinds(log) == ["compat.max_completion_tokens"]
    out, _ = repaired(request(max_completion_tokens=32000, max_tokens=1000))
    assert out["max_tokens"] == 1000 and "max_completion_tokens" not in out


def test_store_and_tools_strict_are_dropped():
    strict_tool = {"type": "function", "function": {**READ_TOOL["function"], "strict": False}}
    out, log = repaired(request(store=False, tools=[strict_tool]))
    assert "store" not in out and "strict" not in out["tools"][0]["function"]
    assert out["tools"][0]["function"]["parameters"] == READ_TOOL["function"]["parameters"]
    assert kinds(log) == ["compat.store", "compat.tool_strict"]


def test_reasoning_effort_is_dropped_and_none_keeps_its_meaning():
    # "cannot specify both 'thinking' and 'reasoning_effort'" (HKUDS/nanobot#3939)
    out, _ = repaired(request(thinking={"type": "enabled"}, reasoning_effort="medium"))
    assert "reasoning_effort" not in out and out["thinking"] == {"type": "enabled"}
    out, _ = repaired(request(reasoning_effort="none"))
    assert "reasoning_effort" not in out and out["thinking"] == {"type": "disabled"}


@pytest.mark.parametrize("model", ["kimi-k2.5", "kimi-k2.6", "moonshotai/kimi-k2.6", "kimi-k2.7-code", "kimi-k3"])
def test_fixed_sampling_models_lose_sampling_fields(model):
    # "invalid temperature: only 1 is allowed for this model" (hermes-agent#12566, opencode#10811);
    # pinned in both thinking modes (inspect_ai#5156)
    sampling = {"temperature": 0.6, "top_p": 1.0, "presence_penalty": 0.1, "frequency_penalty": 0}
    out, log = repaired(request(model, thinking={"type": "disabled"}, **sampling))
    assert not set(sampling) & set(out)
    # (K2.7-code and K3 also lose `thinking: disabled`, which they refuse or ignore: moonshot_rules.py)
    assert [(e.kind, e.before) for e in log.entries if e.kind == "compat.fixed_sampling"] == [
        ("compat.fixed_sampling", sampling)
    ]


@pytest.mark.parametrize("model", ["moonshot-v1-8k", "kimi-k2-0905-preview", "kimi-k2-thinking"])
def test_models_with_free_sampling_keep_it(model):
    out, log = repaired(request(model, temperature=0.3, top_p=0.9))
    assert out["temperature"] == 0.3 and out["top_p"] == 0.9 and not log


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "read"}}], ids=["required", "named"]
)
@pytest.mark.parametrize("thinking", [None, {"type": "enabled"}])
def test_forced_tool_choice_turns_thinking_off_for_that_request(choice, thinking):
    # "tool_choice 'specified' is incompatible with thinking enabled" (oh-my-pi#827, #1077; inspect_ai#5152)
    extra = {"thinking": thinking} if thinking else {}
    out, log = repaired(request("kimi-k2.6", tools=[READ_TOOL], tool_choice=choice, **extra))
    assert out["thinking"] == {"type": "disabled"} and out["tool_choice"] == choice
    assert kinds(log) == ["compat.forced_tool_choice"]


@pytest.mark.parametrize(
    "model,choice,thinking",
    [
        ("kimi-k2.6", "auto", None),
        ("kimi-k2.6", "required", {"type": "disabled"}),
        ("kimi-k3", "required", None),  # thinking cannot be switched off there (agentscope-java#2320)
        ("kimi-k2.7-code", {"type": "function", "function": {"name": "read"}}, None),
    ],
)
def test_tool_choice_left_alone_where_disabling_thinking_is_not_the_answer(model, choice, thinking):
    extra = {"thinking": thinking} if thinking else {}
    out, log = repaired(request(model, tools=[READ_TOOL], tool_choice=choice, **extra))
    assert out.get("thinking") == thinking and not kinds(log)


def test_no_reasoning_placeholder_when_the_forced_tool_choice_turned_thinking_off():
    history = [user("read a"), assistant(call("functions.read:0", "read")), tool("functions.read:0")]
    out, _ = repaired(request("kimi-k2.6", history, tools=[READ_TOOL], tool_choice="required"))
    assert "reasoning_content" not in out["messages"][1]
    out, _ = repaired(request("kimi-k2.6", history, tools=[READ_TOOL]))
    assert out["messages"][1]["reasoning_content"] == " "  # thinking on: Moonshot needs it


OPENAI_DEFAULTS = request(
    "kimi-k2.6",
    [{"role": "developer", "content": "sys"}, user("hi")],
    max_completion_tokens=8000,
    store=False,
    reasoning_effort="high",
    temperature=0.2,
    tools=[{"type": "function", "function": {**READ_TOOL["function"], "strict": True}}],
    tool_choice="required",
)


@pytest.mark.parametrize("flavor", [Flavor.SELFHOSTED, Flavor.DEEPINFRA])
def test_other_flavors_are_untouched(flavor):
    _, log = repaired(OPENAI_DEFAULTS, Policy.build(flavor))
    assert not kinds(log)


def test_off_forwards_everything_as_sent():
    out, log = repaired(OPENAI_DEFAULTS, Policy.build(Flavor.MOONSHOT, request_compat="off"))
    assert out == OPENAI_DEFAULTS and not kinds(log)


def test_every_rule_fires_once_on_openai_defaults_and_names_its_source():
    _, log = repaired(OPENAI_DEFAULTS)
    # (OpenAI's defaults carry schemas Moonshot takes: compat.tool_schema fires on MCP-style ones)
    assert sorted(kinds(log)) == sorted(rule.kind for rule in RULES if rule.kind != "compat.tool_schema")
    assert all(rule.source for rule in RULES)
