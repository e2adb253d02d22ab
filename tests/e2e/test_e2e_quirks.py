"""Real-world quirks through `mitmdump -s addons/kimi.py` against the simulator's shapes of them:
markup with consumed begin markers (typeclaw PR #344), bare calls after `tools: []` (pi-ai with
tool history), markup inside arguments (anomalyco/opencode#37297), reasoning as content with
think tags (smg-project/smg#1873, vllm PR #32490), with the client's view with and without kimiwire."""

import httpx
import openai
import orjson
import pytest

from tests.support.clients import EXPECTED_ANSWER, EXPECTED_TOOL_RUNS, PIAI_VERSIONS, TOOLS, run_piai, tool_runs
from tests.support.proxied import proxied

TASK = [{"role": "user", "content": "read /w/a.txt and read /w/b.txt"}]
HISTORY = [
    {"role": "user", "content": "read /w/a.txt then read /w/b.txt"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "functions.read:0", "type": "function", "function": {"name": "read", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "functions.read:0", "content": "alpha"},
]
BOTH = [("functions.read:0", "read", {"path": "/w/a.txt"}), ("functions.read:1", "read", {"path": "/w/b.txt"})]


@pytest.fixture(scope="module")
def proxy(simulator, tmp_path_factory):
    with proxied(simulator, tmp_path_factory.mktemp("quirks"), {"kimi_done_grace": 0.3}, save_flows=False) as p:
        yield p


def parsed(arguments: str):
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments


def calls_of(base_url: str, sim: str, messages, tools, stream: bool = True):
    with openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="sk", max_retries=0, timeout=20, default_headers={"x-kimi-sim": sim}
    ) as client:
        if stream:
            with client.chat.completions.stream(model="kimi-k2-thinking", messages=messages, tools=tools) as s:
                completion = s.get_final_completion()
        else:
            completion = client.chat.completions.create(model="kimi-k2-thinking", messages=messages, tools=tools)
    choice = completion.choices[0]
    calls = [(c.id, c.function.name, parsed(c.function.arguments)) for c in choice.message.tool_calls or []]
    return calls, choice.message.content or "", choice.finish_reason


LEAKS = {
    "consumed": ("shape=sglang,leak=consumed", TASK, TOOLS, BOTH),
    "consumed-functions": ("shape=sglang,leak=consumed-functions", TASK, TOOLS, BOTH),
    "in-arguments": ("shape=vllm,leak=in-arguments", TASK, TOOLS, BOTH),
    "untooled": ("shape=sglang,leak=untooled", HISTORY, [], [("functions.read:1", "read", {"path": "/w/b.txt"})]),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("leak", LEAKS)
def test_leaked_calls_become_real_calls_through_the_proxy(proxy, simulator, leak, stream):
    sim, messages, tools, expected = LEAKS[leak]
    calls, content, finish = calls_of(proxy.url, sim, messages, tools, stream)
    assert calls == expected
    assert "<|tool_call" not in content and "functions." not in content
    assert finish == "tool_calls"
    # without the proxy the same answer has no usable call
    direct, direct_content, _ = calls_of(simulator.url, sim, messages, tools, stream)
    assert direct != expected
    assert "<|tool_call" in direct_content + str(direct) or "functions.read" in direct_content


def test_repairs_are_recorded_on_the_flow(simulator, tmp_path):
    with proxied(simulator, tmp_path) as p:
        calls_of(p.url, "shape=vllm,leak=in-arguments", TASK, TOOLS)
        calls_of(p.url, "shape=sglang,leak=consumed", TASK, TOOLS)
        httpx.post(
            f"{p.url}/v1/chat/completions",
            headers={"x-kimi-sim": "shape=sglang,think=block"},
            json={"model": "kimi-k2-thinking", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            timeout=20,
        )
    kinds = [{e["kind"] for e in f.metadata["kimiwire"]["repairs"]} for f in p.read_flows()]
    assert "markup.in_arguments" in kinds[0]
    assert "markup.recovered_consumed" in kinds[1]
    assert {"think.open_tag", "think.close_tag"} <= kinds[2]


THINK = {"prefilled": ("think=prefilled", "kimi-k2.6"), "block": ("think=block", "kimi-k2-thinking")}


@pytest.mark.parametrize("version", PIAI_VERSIONS)
@pytest.mark.parametrize("think", THINK)
def test_piai_sees_reasoning_as_thinking_through_the_proxy(proxy, simulator, version, think):
    sim, model = THINK[think]
    fixed = run_piai(version, proxy.url, f"shape=sglang,{sim}", model=model)
    assert tool_runs(fixed) == EXPECTED_TOOL_RUNS, fixed
    assert fixed["finalText"] == EXPECTED_ANSWER
    assert all("".join(t["thinking"]).startswith(("Step ", "All ")) for t in fixed["turns"]), fixed["turns"]
    assert not any("think>" in t["text"] + "".join(t["thinking"]) for t in fixed["turns"])
    # Without kimiwire the reasoning and the tags are the answer's text.
    direct = run_piai(version, simulator.url, f"shape=sglang,{sim}", model=model)
    assert tool_runs(direct) == EXPECTED_TOOL_RUNS
    assert "</think>" in direct["finalText"] and direct["finalText"] != EXPECTED_ANSWER
    assert not any(t["thinking"] for t in direct["turns"])
