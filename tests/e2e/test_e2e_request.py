"""mitmdump + the addon in reverse mode in front of a recording upstream: what the server receives."""

import gzip
import subprocess

import httpx
import orjson
import pytest

from tests.support.conversations import assistant, body, call, tool, user
from tests.support.mitm import Mitmdump
from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION, json_reply


def openclaw_request(**extra):
    return body(
        [
            {"role": "system", "content": "sys"},
            user("read a"),
            assistant(call("functionsread0", "read", {"path": "a"}), reasoning_content="r1"),
            tool("functionsread0", "A"),
            assistant(content="A read", reasoning_content="rF"),
            user("now b"),
            assistant(call("functionsread0", "read", {"path": "b"}), reasoning_content="r2"),
            tool("functionsread0", "B"),
        ],
        **extra,
    )


def answer(request):
    return json_reply(TEXT_COMPLETION)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """One proxy with the default options, for the tests that look only at what the upstream got."""
    with proxied(answer, tmp_path_factory.mktemp("request"), save_flows=False) as p:
        yield p


def received_one(proxy, before: int):
    """The one request the upstream got since it had `before`."""
    [received] = proxy.upstream.requests[before:]
    return received


KNOWN_FIELDS = {
    "model",
    "messages",
    "tools",
    "stream",
    "chat_template_kwargs",
    "reasoning_effort",
    "max_tokens",
    "max_completion_tokens",
    "store",
    "temperature",
    "stream_options",
    "tool_choice",
}


@pytest.mark.parametrize(
    "flavor,expect_reasoning,expect_thinking_field",
    [
        ("auto", [None, None, None], False),
        # Moonshot checks every tool-call turn while thinking: an earlier loop's reasoning stays
        ("moonshot", ["r1", None, "r2"], True),
        ("deepinfra", [None, None, "r2"], False),
    ],
)
def test_upstream_receives_repaired_request(tmp_path, flavor, expect_reasoning, expect_thinking_field):
    with proxied(answer, tmp_path, {"kimi_flavor": flavor}) as proxy:
        upstream = proxy.upstream
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json=openclaw_request(thinking={"type": "enabled"}, store=False, reasoning_effort="medium"),
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"
    sent = upstream.requests[0].json()
    msgs = sent["messages"]
    assert [c["id"] for m in msgs if m.get("tool_calls") for c in m["tool_calls"]] == [
        "functions.read:0",
        "functions.read:1",
    ]
    assert [m["tool_call_id"] for m in msgs if m["role"] == "tool"] == ["functions.read:0", "functions.read:1"]
    assert [m.get("reasoning_content") for m in msgs if m["role"] == "assistant"] == expect_reasoning
    assert ("thinking" in sent) is expect_thinking_field
    if flavor == "auto":  # 127.0.0.1 is a self-hosted server
        assert sent["chat_template_kwargs"] == {"thinking": True}
        assert set(sent) <= KNOWN_FIELDS
    assert upstream.requests[0].headers["accept-encoding"] == "identity"

    [flow] = proxy.read_flows()
    record = flow.metadata["kimiwire"]
    kinds = {r["kind"] for r in record["repairs"]}
    assert {"ids.call", "ids.result"} <= kinds
    assert record["policy"]["flavor"] == ("selfhosted" if flavor == "auto" else flavor)
    assert flow.marked == ":wrench:"
    assert "ids.call=2" in flow.comment and "ids.result=2" in flow.comment
    assert "reasoning.stripped=" in flow.comment
    # the client's original request is in the run's capture
    [capture] = proxy.capture_files()
    [saved] = proxy.read_flows(capture)
    assert b"functionsread0" in saved.request.content and b"functionsread0" not in flow.request.content
    assert "kimiwire request POST /v1/chat/completions:" in proxy.output


def test_nothing_to_repair_is_forwarded_byte_for_byte(proxy):
    raw = b'{"model": "k",   "messages": [{"role": "user", "content": "caf\\u00e9"}], "stream": false}'
    before = len(proxy.upstream.requests)
    httpx.post(
        f"{proxy.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=10
    )
    assert received_one(proxy, before).body == raw


@pytest.mark.parametrize(
    "raw,content_type,reason",
    [
        (b'{"model": "k", "messages": [', "application/json", "not valid JSON"),
        (b'["a"]', "application/json", "not an object"),
        (b'{"messages": "hello"}', "application/json", "not a list"),
        (
            b'{"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {}}]}]}',
            "application/json",
            "without a function name",
        ),
        (b'{"messages": [{"role": "user"}]}', "text/plain", "is not JSON"),
    ],
)
def test_bad_input_passes_through_and_says_why(tmp_path, raw, content_type, reason):
    with proxied(answer, tmp_path) as proxy:
        upstream = proxy.upstream
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions", content=raw, headers={"content-type": content_type}, timeout=10
        )
        assert r.status_code == 200
    assert upstream.requests[0].body == raw
    [flow] = proxy.read_flows()
    assert any(reason in note for note in flow.metadata["kimiwire"]["notes"])
    assert reason in proxy.output


def test_gzip_request_is_repaired_as_decoded(proxy):
    raw = orjson.dumps(openclaw_request())
    before = len(proxy.upstream.requests)
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=gzip.compress(raw),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=10,
    )
    received = received_one(proxy, before)
    data = gzip.decompress(received.body) if received.headers.get("content-encoding") == "gzip" else received.body
    assert b"functions.read:1" in data


def test_other_paths_are_untouched(proxy):
    raw = orjson.dumps(openclaw_request())
    before = len(proxy.upstream.requests)
    httpx.post(f"{proxy.url}/v1/completions", content=raw, headers={"content-type": "application/json"}, timeout=10)
    received = received_one(proxy, before)
    assert received.body == raw
    assert "accept-encoding" not in received.headers or received.headers["accept-encoding"] != "identity"


def test_bad_option_value_stops_startup(proxy, tmp_path):
    refused = Mitmdump(proxy.upstream.url, tmp_path, {"kimi_flavor": "bogus"})
    done = subprocess.run(refused.args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "kimi_flavor must be one of auto, selfhosted, sglang, vllm, moonshot, deepinfra" in done.stdout + done.stderr


def test_bodies_orjson_refuses_are_still_repaired_exactly(tmp_path):
    """Node's JSON.stringify writes `\\ud83d` for an emoji cut by .slice(); an integer past 64 bits
    must stay that integer. Both reach the upstream as sent, with the history repaired."""
    cut = b'"see \\ud83d"'
    raw = (
        b'{"model":"k","seed":123456789012345678901234567890,"messages":[{"role":"user","content":'
        + cut
        + b'},{"role":"assistant","content":null,"reasoning_content":"r \\udc00","tool_calls":[{"id":"functionsread0",'
        b'"type":"function","function":{"name":"read","arguments":"{\\"path\\":\\"a\\"}"}}]},'
        b'{"role":"tool","tool_call_id":"functionsread0","content":"A"}]}'
    )
    with proxied(answer, tmp_path) as proxy:
        upstream = proxy.upstream
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=10
        )
        assert r.status_code == 200
    sent = upstream.requests[0].body
    assert cut in sent and b'"seed":123456789012345678901234567890,' in sent
    assert b'"functions.read:0"' in sent and b"functionsread0" not in sent
    assert b"reasoning_content" not in sent  # stripped for a self-hosted server, as usual
    [flow] = proxy.read_flows()
    record = flow.metadata["kimiwire"]
    assert {"ids.call", "ids.result", "reasoning.stripped"} <= {r["kind"] for r in record["repairs"]}
    assert any("exact JSON decoder" in note for note in record["notes"])
    [capture] = proxy.capture_files()
    [saved] = proxy.read_flows(capture)
    assert saved.request.content == raw
