"""Moonshot request compatibility through mitmdump: the OpenAI Python SDK sends
OpenAI's defaults; an upstream that rejects them the way Moonshot does (its documented 400 bodies)
fails the request direct and with `kimi_request_compat=off`, and answers it through kimiwire."""

import openai
import pytest

from tests.support.conversations import READ_TOOL
from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION, RecordingUpstream, json_reply


def moonshot_rejection(request) -> str | None:
    """The first of Moonshot's documented 400 messages this request earns (sources in compat.py)."""
    body = request.json()
    thinking_on = (body.get("thinking") or {}).get("type", "enabled") == "enabled"
    if any(m.get("role") == "developer" for m in body["messages"]):
        return "invalid request: unsupported role ROLE_UNSPECIFIED"
    if "thinking" in body and "reasoning_effort" in body:
        return "cannot specify both 'thinking' and 'reasoning_effort'"
    if "temperature" in body and body["temperature"] != (1 if thinking_on else 0.6):
        return f"invalid temperature: only {1 if thinking_on else 0.6} is allowed for this model"
    if body.get("tool_choice") not in (None, "auto", "none") and thinking_on:
        return "tool_choice 'specified' is incompatible with thinking enabled"
    for key in ("store", "max_completion_tokens"):
        if key in body:
            return f"unknown field {key}"
    if any("strict" in t["function"] for t in body.get("tools") or ()):
        return "unknown field strict"
    return None


def moonshot_like(request):
    problem = moonshot_rejection(request)
    if problem:
        return json_reply({"error": {"message": problem, "type": "invalid_request_error"}}, 400)
    return json_reply(TEXT_COMPLETION)


def openai_sdk_turn(base_url: str):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, timeout=15) as client:
        return client.chat.completions.create(
            model="kimi-k2.6",
            messages=[
                {"role": "developer", "content": "You are a coding agent."},
                {"role": "user", "content": "read a"},
            ],
            max_completion_tokens=8000,
            store=False,
            reasoning_effort="high",
            temperature=0.2,
            tools=[{"type": "function", "function": {**READ_TOOL["function"], "strict": True}}],
            tool_choice="required",
        )


@pytest.fixture
def upstream():
    with RecordingUpstream(moonshot_like) as up:
        yield up


def test_direct_and_compat_off_fail_with_moonshots_400(upstream, tmp_path):
    with pytest.raises(openai.BadRequestError, match="ROLE_UNSPECIFIED"):
        openai_sdk_turn(upstream.url)
    options = {"kimi_flavor": "moonshot", "kimi_request_compat": "off"}
    with proxied(upstream, tmp_path, options) as proxy, pytest.raises(openai.BadRequestError):
        openai_sdk_turn(proxy.url)


def test_through_kimiwire_the_turn_succeeds(upstream, tmp_path):
    with proxied(upstream, tmp_path, {"kimi_flavor": "moonshot"}) as proxy:
        reply = openai_sdk_turn(proxy.url)
    assert reply.choices[0].message.content == "hi"
    sent = upstream.requests[-1].json()
    assert sent["messages"][0]["role"] == "system" and sent["max_tokens"] == 8000
    assert sent["thinking"] == {"type": "disabled"} and sent["tool_choice"] == "required"
    assert not {"store", "max_completion_tokens", "reasoning_effort", "temperature"} & set(sent)
    assert "strict" not in sent["tools"][0]["function"]
    [flow] = proxy.read_flows()
    kinds = {r["kind"] for r in flow.metadata["kimiwire"]["repairs"]}
    assert {
        "compat.developer_role",
        "compat.max_completion_tokens",
        "compat.store",
        "compat.reasoning_effort",
        "compat.tool_strict",
        "compat.fixed_sampling",
        "compat.forced_tool_choice",
    } <= kinds
    assert "compat.forced_tool_choice=1" in flow.comment
