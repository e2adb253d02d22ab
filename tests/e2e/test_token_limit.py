"""max_tokens beyond the context (wire/request/token_limit.py): the limit each server states in its
400, and through mitmdump one more attempt with max_tokens lowered to the room stated."""

import openai
import orjson
import pytest
from kimiwire.wire.request.token_limit import clamp_max_tokens

from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION, RecordingUpstream, json_reply

REQUEST = orjson.dumps({"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32000})


def error(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})


@pytest.mark.parametrize(
    ("message", "room"),
    [
        # Moonshot (MoonshotAI/kimi-cli#2011): limit 262144, prompt 240000 + 32000 requested
        ("Invalid request: Your request exceeded model token limit: 262144 (requested: 272000)", 22144),
        # vLLM (BerriAI/litellm#22478), both wordings
        (
            "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum context length is "
            "40960 tokens and your request has 12000 input tokens (32000 > 40960 - 12000).",
            28960,
        ),
        (
            "This model's maximum context length is 40960 tokens. However, you requested 44000 tokens "
            "(12000 in the messages, 32000 in the completion).",
            28960,
        ),
        # Groq (Kilo-Org/kilocode#1332)
        (
            "`max_tokens` must be less than or equal to `16384`, the maximum value for `max_tokens` is less than "
            "the `context_window` for this model",
            16384,
        ),
    ],
)
def test_the_stated_limit_leaves_this_room(message, room):
    clamped = clamp_max_tokens(error(message), REQUEST)
    assert clamped is not None and clamped.after == room and clamped.before == 32000
    assert orjson.loads(clamped.body)["max_tokens"] == room


def test_a_limit_wrapped_by_a_gateway_is_read():
    raw = "Invalid request: Your request exceeded model token limit: 262144 (requested: 272000)"
    wrapped = orjson.dumps({"error": {"message": "Provider returned error", "code": 400, "metadata": {"raw": raw}}})
    assert clamp_max_tokens(wrapped, REQUEST).after == 22144


@pytest.mark.parametrize(
    "message",
    [
        "invalid temperature: only 1 is allowed for this model",
        "Invalid request: Your request exceeded model token limit: 262144 (requested: 300000)",  # prompt alone too long
    ],
)
def test_no_stated_room_no_clamp(message):
    assert clamp_max_tokens(error(message), REQUEST) is None


def moonshot_limit(request):
    body = request.json()
    if body["max_tokens"] + 240000 > 262144:
        total = body["max_tokens"] + 240000
        message = f"Invalid request: Your request exceeded model token limit: 262144 (requested: {total})"
        return json_reply({"error": {"message": message, "type": "invalid_request_error"}}, 400)
    return json_reply(TEXT_COMPLETION)


def test_through_kimiwire_the_request_is_sent_once_more_with_the_room_stated(tmp_path):
    with RecordingUpstream(moonshot_limit) as upstream:
        direct = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="k", max_retries=0, timeout=15)
        with direct, pytest.raises(openai.BadRequestError, match="exceeded model token limit"):
            direct.chat.completions.create(
                model="kimi-k2.6", messages=[{"role": "user", "content": "hi"}], max_tokens=32000
            )
        with proxied(upstream, tmp_path, {"kimi_flavor": "moonshot"}) as proxy:
            with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0, timeout=15) as client:
                reply = client.chat.completions.create(
                    model="kimi-k2.6", messages=[{"role": "user", "content": "hi"}], max_tokens=32000
                )
            [flow] = proxy.read_flows()
        assert reply.choices[0].message.content == "hi"
        assert [r.json()["max_tokens"] for r in upstream.requests] == [32000, 32000, 22144]
        kinds = [r["kind"] for r in flow.metadata["kimiwire"]["repairs"]]
        assert "request.max_tokens_clamped" in kinds
