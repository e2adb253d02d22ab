"""Response repair through mitmdump, with the OpenAI Python SDK as the client."""

import httpx
import openai
import orjson
import pytest
from kimiwire.mitm.capture import delivered_body

from tests.support import streams
from tests.support.conversations import TOOLS, assistant, call, tool, user
from tests.support.piai_model import piai_parse
from tests.support.proxied import proxied
from tests.support.streams import EXEC_ARGS, READ_ARGS
from tests.support.upstream import Reply, json_reply, sse_reply

TWO = [("read", READ_ARGS), ("exec", EXEC_ARGS)]
SHAPES = {
    "sglang": lambda: streams.sglang(TWO),
    "vllm": lambda: streams.vllm(TWO),
    "moonshot": lambda: streams.moonshot(TWO),
    "interleaved": lambda: streams.interleaved(TWO),
    "reasoning_between": lambda: streams.reasoning_between_fragments("read", READ_ARGS),
    "markup": lambda: streams.markup_leak(TWO),
    "markup_bare": lambda: streams.markup_leak(TWO, bare=True),
    "one_chunk": lambda: streams.whole_calls_in_one_chunk(TWO),
}
EXPECTED = {name: TWO for name in SHAPES} | {"reasoning_between": [("read", READ_ARGS)]}

HISTORY = [user("go"), assistant(call("functionsread0", "read")), tool("functionsread0", "x")]


def shaped(request):
    shape = request.headers.get("x-shape", "sglang")
    return sse_reply(SHAPES[shape]().events)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with proxied(shaped, tmp_path_factory.mktemp("proxy")) as p:
        yield p


@pytest.mark.parametrize("shape", SHAPES)
def test_openai_sdk_gets_exact_calls(proxy, shape):
    with openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, timeout=15, default_headers={"x-shape": shape}
    ) as client:
        chunks = list(
            client.chat.completions.create(model="kimi-k2-thinking", messages=HISTORY, tools=TOOLS, stream=True)
        )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        assert "<|tool_call" not in (choice.delta.content or "")
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = entry["id"] or tc.id
            entry["name"] += (tc.function.name or "") if tc.function else ""
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
    got = [(c["id"], c["name"], orjson.loads(c["arguments"])) for _, c in sorted(calls.items())]
    # one tool call in the history: this response's calls continue at 1
    assert got == [(f"functions.{n}:{1 + i}", n, orjson.loads(a)) for i, (n, a) in enumerate(EXPECTED[shape])]
    assert finish == "tool_calls"


@pytest.mark.parametrize("shape", ["interleaved", "reasoning_between", "markup"])
def test_one_current_block_client_through_the_proxy(proxy, shape):
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"x-shape": shape},
        timeout=15,
        json={"model": "k", "messages": HISTORY, "tools": TOOLS, "stream": True},
    )
    parsed = piai_parse(r.content)
    assert [(n, a) for _, n, a in parsed["calls"]] == [(n, orjson.loads(a)) for n, a in EXPECTED[shape]]
    assert r.content.endswith(b"data: [DONE]\n\n")


def test_flow_keeps_upstream_body_and_delivered_copy(tmp_path):
    with proxied(shaped, tmp_path) as p:
        r = httpx.post(
            f"{p.url}/v1/chat/completions",
            headers={"x-shape": "interleaved"},
            timeout=15,
            json={"model": "k", "messages": HISTORY, "tools": TOOLS, "stream": True},
        )
    [flow] = p.read_flows()
    assert flow.response.content == streams.interleaved(TWO).body()
    assert delivered_body(flow) == r.content
    kinds = {e["kind"] for e in flow.metadata["kimiwire"]["repairs"] if e["phase"] == "response"}
    assert {"stream.tool_call_joined", "ids.response"} <= kinds
    assert "stream.tool_call_joined" in flow.comment


def test_non_streaming_markup_is_repaired(tmp_path):
    content = (
        "ok<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>"
        + READ_ARGS
        + "<|tool_call_end|><|tool_calls_section_end|>"
    )
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "k",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    with (
        proxied(lambda req: json_reply(body), tmp_path) as p,
        openai.OpenAI(base_url=f"{p.url}/v1", api_key="sk", max_retries=0, timeout=15) as client,
    ):
        result = client.chat.completions.create(model="k", messages=HISTORY, tools=TOOLS)
    message = result.choices[0].message
    assert message.content == "ok"
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("functions.read:1", "read", READ_ARGS)
    ]
    assert result.choices[0].finish_reason == "tool_calls"


def test_upstream_error_json_passes_through(tmp_path):
    error = {"error": {"message": "rate limited", "type": "rate_limit", "code": 429}}
    with proxied(lambda req: json_reply(error, 429), tmp_path) as p:
        r = httpx.post(f"{p.url}/v1/chat/completions", json={"model": "k", "messages": HISTORY}, timeout=15)
    assert r.status_code == 429 and r.json() == error


def test_content_length_stream_is_reframed(tmp_path):
    body = streams.interleaved(TWO).body()
    reply = Reply(headers={"content-type": "text/event-stream"}, pieces=[body], framing="length")
    with proxied(lambda req: reply, tmp_path) as p:
        r = httpx.post(
            f"{p.url}/v1/chat/completions",
            json={"model": "k", "messages": HISTORY, "tools": TOOLS, "stream": True},
            timeout=15,
        )
    assert [n for _, n, _ in piai_parse(r.content)["calls"]] == ["read", "exec"]
