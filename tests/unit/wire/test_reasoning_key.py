"""Kept reasoning goes under the key the self-hosted server reads: vLLM reads only
`reasoning` on input (vllm chat_utils `_parse_chat_message_content`; vllm#27752, #33402, #38488),
SGLang only `reasoning_content` (sglang protocol.py `ChatCompletionMessageGenericParam`)."""

import orjson
import pytest
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import FLAVOR_CHOICES, Flavor, Policy, detect_flavor

from tests.support.conversations import assistant, body, call, tool, user


def history():
    # The Vercel AI SDK (@ai-sdk/openai-compatible) replays `reasoning_content` (vllm#38488);
    # a harness that kept vLLM's own output replays `reasoning`.
    return [
        user("read a"),
        assistant(call("functions.read:0", "read"), reasoning_content="old loop"),
        tool("functions.read:0"),
        assistant(content="done"),
        user("now b"),
        assistant(call("functions.read:1", "read"), reasoning_content="needs b"),
        tool("functions.read:1"),
        assistant(call("functions.read:2", "read"), reasoning="vllm said so"),
        tool("functions.read:2"),
    ]


def repaired(policy):
    result = repair_request_body(orjson.dumps(body(history())), policy)
    return orjson.loads(result.body), result.log


def reasoning_of(messages):
    return [
        {k: m[k] for k in ("reasoning_content", "reasoning") if k in m} for m in messages if m["role"] == "assistant"
    ]


def test_vllm_loop_keeps_the_current_loop_under_reasoning():
    out, log = repaired(Policy.build(Flavor.VLLM, reasoning="loop"))
    assert reasoning_of(out["messages"]) == [{}, {}, {"reasoning": "needs b"}, {"reasoning": "vllm said so"}]
    assert ("reasoning.renamed", 5, "reasoning_content", "reasoning") in [
        (e.kind, e.message_index, e.before, e.after) for e in log.entries
    ]


def test_vllm_keep_renames_every_message_to_reasoning():
    out, _ = repaired(Policy.build(Flavor.VLLM, reasoning="keep"))
    assert reasoning_of(out["messages"]) == [
        {"reasoning": "old loop"},
        {},
        {"reasoning": "needs b"},
        {"reasoning": "vllm said so"},
    ]


@pytest.mark.parametrize("flavor", [Flavor.SGLANG, Flavor.SELFHOSTED])
def test_sglang_and_generic_selfhosted_keep_reasoning_content(flavor):
    out, _ = repaired(Policy.build(flavor, reasoning="loop"))
    assert reasoning_of(out["messages"]) == [
        {},
        {},
        {"reasoning_content": "needs b"},
        {"reasoning_content": "vllm said so"},
    ]


@pytest.mark.parametrize("flavor", [Flavor.SGLANG, Flavor.VLLM])
def test_named_engines_behave_as_selfhosted_otherwise(flavor):
    policy = Policy.build(flavor)
    assert policy.reasoning == "strip"
    out, _ = repaired(policy)
    assert reasoning_of(out["messages"]) == [{}, {}, {}, {}]
    result = repair_request_body(orjson.dumps(body([user()], thinking={"type": "disabled"})), policy)
    assert orjson.loads(result.body)["chat_template_kwargs"] == {"thinking": False}


def test_flavor_choices_and_auto():
    assert FLAVOR_CHOICES == ("auto", "selfhosted", "sglang", "vllm", "moonshot", "deepinfra", "openrouter")
    assert detect_flavor("10.0.0.5") is Flavor.SELFHOSTED  # a host cannot tell SGLang from vLLM
