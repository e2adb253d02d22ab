"""Kimi K3 and the engines as released, through `mitmdump -s addons/kimi.py` against the
simulator: K3's tools channel as content, an answer in the reasoning field (sglang PR #33995),
vLLM 0.11.1-0.13.0's re-send at the section end, a cut call reported as `tool_calls` (vllm
#47761), and a call the server holds back (vllm PR #50627)."""

import httpx
import openai
import orjson
import pytest

from tests.support.clients import TOOLS
from tests.support.proxied import proxied

TASK = [{"role": "user", "content": "read /w/a.txt and read /w/b.txt"}]
BOTH = [("functions.read:0", "read", {"path": "/w/a.txt"}), ("functions.read:1", "read", {"path": "/w/b.txt"})]
# Every default timeout /100 (kimi_timeout_scale): idle 0.6 s, tool idle 6 s, a comment every 0.1 s.
SCALED = {"kimi_timeout_scale": "0.01"}


@pytest.fixture(scope="module")
def proxy(simulator, tmp_path_factory):
    with proxied(simulator, tmp_path_factory.mktemp("k3"), SCALED, save_flows=False) as p:
        yield p


def turn(base_url: str, sim: str, messages, tools, stream: bool = True, model: str = "kimi-k3"):
    with openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="sk", max_retries=0, timeout=20, default_headers={"x-kimi-sim": sim}
    ) as client:
        kwargs = {"tools": tools} if tools else {}
        if stream:
            with client.chat.completions.stream(model=model, messages=messages, **kwargs) as s:
                completion = s.get_final_completion()
        else:
            completion = client.chat.completions.create(model=model, messages=messages, **kwargs)
    choice = completion.choices[0]
    calls = [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    return calls, choice.message.content or "", choice.finish_reason


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_k3_tools_channel_becomes_calls(proxy, simulator, stream):
    calls, content, finish = turn(proxy.url, "shape=vllm,leak=k3-tools", TASK, TOOLS, stream)
    assert calls == BOTH and finish == "tool_calls"
    assert "<|" not in content
    direct, direct_content, _ = turn(simulator.url, "shape=vllm,leak=k3-tools", TASK, TOOLS, stream)
    assert direct == [] and "<|open|>tools<|sep|>" in direct_content


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_an_answer_in_reasoning_reaches_content_and_is_not_retried(proxy, simulator, stream):
    hello = [{"role": "user", "content": "hello"}]
    calls, content, finish = turn(proxy.url, "shape=sglang,leak=k3-answer-in-reasoning", hello, None, stream)
    _, direct_content, _ = turn(simulator.url, "shape=sglang,leak=k3-answer-in-reasoning", hello, None, stream)
    assert direct_content == ""
    assert content.strip() and "<|" not in content and finish == "stop" and calls == []


def test_a_call_resent_at_the_section_end_is_delivered_once(proxy, simulator):
    calls, content, finish = turn(proxy.url, "shape=vllm,leak=resend", TASK, TOOLS, model="kimi-k2.6")
    assert calls == BOTH and finish == "tool_calls" and "<|" not in content
    direct, direct_content, _ = turn(simulator.url, "shape=vllm,leak=resend", TASK, TOOLS, model="kimi-k2.6")
    assert len(direct) == 2 and "<|tool_call_begin|>" in direct_content


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_cut_call_reported_as_tool_calls_ends_with_length(proxy, simulator, stream):
    def finish_of(base_url: str) -> str:
        body = {"model": "kimi-k2.6", "stream": stream, "messages": TASK, "tools": TOOLS}
        headers = {"x-kimi-sim": "shape=vllm,leak=cut-call"}
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=20)
        if not stream:
            return r.json()["choices"][0]["finish_reason"]
        events = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        return [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")][-1]

    assert finish_of(proxy.url) == "length"
    assert finish_of(simulator.url) == "tool_calls"


def test_a_held_back_call_gets_comments_and_outlives_the_idle_timeout(proxy):
    # 2 s of silence before the call: longer than the (scaled) idle timeout, shorter than the tool one.
    body = {"model": "kimi-k3", "stream": True, "messages": TASK, "tools": TOOLS}
    headers = {"x-kimi-sim": "shape=vllm,held_call=2"}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=20) as r:
        text = "".join(r.iter_text())
    assert text.count(": kimiwire waiting for upstream") >= 10
    assert "upstream_idle_timeout" not in text and "data: [DONE]" in text
    events = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    names = [c["function"].get("name") for e in events for c in (e["choices"][0]["delta"].get("tool_calls") or [])]
    assert "read" in names
