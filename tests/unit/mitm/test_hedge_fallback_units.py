"""The hedge's content test and the fallback's option and request, without a proxy."""

from __future__ import annotations

import orjson
import pytest
from kimiwire.mitm.fallback import Fallback
from kimiwire.mitm.hedge import shows_content
from kimiwire.wire.servers.policy import PolicyCache


def chunk(delta: dict) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n"


@pytest.mark.parametrize(
    "event,content",
    [
        (chunk({"role": "assistant", "content": ""}), False),
        (b": kimiwire waiting for upstream\n\n", False),
        (b"data: [DONE]\n\n", False),
        (chunk({"content": "Hi"}), True),
        (chunk({"reasoning_content": "hm"}), True),
        (chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "read", "arguments": ""}}]}), True),
    ],
)
def test_content_is_a_text_reasoning_or_tool_delta(event, content):
    assert shows_content(event) is content


def test_the_fallback_takes_an_origin_and_a_key_named_by_the_environment():
    assert Fallback.parse("", "auto", "", {}) is None
    fallback = Fallback.parse("https://api.example:8443", "auto", "FB_KEY", {"FB_KEY": "sk-fb"})
    assert fallback is not None and fallback.origin == "https://api.example:8443" and "sk-fb" not in fallback.describe()
    for bad, env in [("ftp://x", ""), ("https://x/v1", ""), ("https://x", "MISSING")]:
        with pytest.raises(ValueError):
            Fallback.parse(bad, "auto", env, {})


def test_the_fallback_request_is_the_clients_body_with_the_fallbacks_authorization():
    fallback = Fallback.parse("http://127.0.0.1:9", "auto", "FB_KEY", {"FB_KEY": "sk-fb"})
    assert fallback is not None
    body = orjson.dumps({"model": "kimi-k2", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    client_headers = [("Host", "proxy"), ("Authorization", "Bearer sk-client"), ("Content-Type", "application/json")]
    target = fallback.target("/v1/chat/completions", client_headers, body, PolicyCache().policy("127.0.0.1"), 10)
    assert target.url == "http://127.0.0.1:9/v1/chat/completions" and target.facts.stream
    assert ("authorization", "Bearer sk-fb") in target.headers
    assert not [k for k, v in target.headers if k.lower() == "host" or v == "Bearer sk-client"]
    assert orjson.loads(target.body)["messages"] == [{"role": "user", "content": "hi"}]
