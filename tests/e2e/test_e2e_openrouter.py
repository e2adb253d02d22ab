"""Through mitmdump in front of an OpenRouter-shaped upstream (kimi_flavor=openrouter; a scripted
server answering as OpenRouter does, shapes from OpenRouterTeam/ai-sdk-provider src/chat/schemas.ts
and openrouter.ai/docs): what a Kimi model's request looks like when it leaves, the reasoning the
OpenAI SDK gets from reasoning_details, and an error OpenRouter reports inside a 200 retried."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION, RecordedRequest, Reply, json_reply, sse_reply
from tests.unit.wire.servers.test_openrouter import DETAILS_STREAM

MODEL = "moonshotai/kimi-k2.6"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "github.create_issue", "parameters": {"type": "object", "properties": {}}},
    }
]
HISTORY: list[Any] = [
    {"role": "user", "content": "file it"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I will file it",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "github.create_issue", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "filed #1"},
    {"role": "assistant", "content": "Filed."},
    {"role": "user", "content": "and now?"},
]


IN_BAND = {
    "id": "gen-3",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "finish_reason": "error",
            "error": {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"provider_name": "Moonshot AI"},
            },
        }
    ],
}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=20)


def test_kimi_through_openrouter_request_rules_and_reasoning_details(tmp_path) -> None:
    def answer(_: RecordedRequest) -> Reply:
        return sse_reply(DETAILS_STREAM)

    with proxied(answer, tmp_path, {"kimi_flavor": "openrouter"}) as proxy:
        upstream = proxy.upstream
        with _client(proxy.url) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=HISTORY, tools=TOOLS, temperature=0.3, stream=True
            )
            deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
        sent = upstream.requests[0].json()
    # Moonshot's rules for its model behind OpenRouter; the earlier loop's reasoning kept the way
    # OpenRouter takes it back (Moonshot checks every tool-call turn while thinking).
    assert sent["tools"][0]["function"]["name"] == "github_create_issue" and "temperature" not in sent
    turn = sent["messages"][1]
    assert turn["tool_calls"][0]["function"]["name"] == "github_create_issue"
    assert turn["reasoning"] == "I will file it" and "reasoning_content" not in turn
    assert turn["reasoning_details"][0] == {
        "type": "reasoning.text",
        "text": "I will file it",
        "format": "unknown",
        "index": 0,
    }
    # What the OpenAI SDK reads: every reasoning text, those that came only as details too.
    reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert reasoning == "Let me think. So."
    assert "".join(d.content or "" for d in deltas) == "Hello"


def test_an_error_openrouter_reports_in_a_200_is_retried(tmp_path) -> None:
    replies = [json_reply(IN_BAND), json_reply(TEXT_COMPLETION)]

    def answer(_: RecordedRequest) -> Reply:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    with proxied(answer, tmp_path, {"kimi_flavor": "openrouter"}) as proxy:
        upstream = proxy.upstream
        with _client(proxy.url) as client:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        [flow] = proxy.read_flows()
    assert reply.choices[0].message.content == "hi" and len(upstream.requests) == 2
    attempts = flow.metadata["kimiwire"]["attempts"]
    assert [(a["why"], a["outcome"]) for a in attempts] == [("first", "status"), ("status", "answered")]


def test_when_attempts_run_out_the_client_gets_openrouters_error(tmp_path) -> None:
    with (
        proxied(lambda _: json_reply(IN_BAND), tmp_path, {"kimi_flavor": "openrouter", "kimi_retries": 1}) as proxy,
        _client(proxy.url) as client,
        pytest.raises(openai.InternalServerError, match="Provider returned error") as raised,
    ):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502 and len(proxy.upstream.requests) == 2
