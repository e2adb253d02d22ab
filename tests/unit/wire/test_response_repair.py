import orjson
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.conversations import TOOLS
from tests.support.streams import READ_ARGS

FACTS = RequestFacts(3, {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}, True, False)
POLICY = Policy.build(Flavor.SELFHOSTED)


def completion(message, finish="stop", **choice_extra):
    return {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice_extra}],
    }


def run(body):
    new, log, why = repair_completion_body(orjson.dumps(body), FACTS, POLICY)
    assert why is None
    return (orjson.loads(new) if new else body), log


def test_markup_in_content_becomes_tool_calls():
    content = (
        "Reading.<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>"
        + READ_ARGS
        + "<|tool_call_end|><|tool_calls_section_end|>"
    )
    out, log = run(completion({"content": content}))
    message = out["choices"][0]["message"]
    assert message["content"] == "Reading."
    assert message["tool_calls"] == [
        {"id": "functions.read:3", "type": "function", "function": {"name": "read", "arguments": READ_ARGS}}
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert {"markup.recovered_markup", "finish_reason.fixed"} <= set(log.kinds())


def test_double_encoded_arguments_and_ids():
    calls = [
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "read", "arguments": orjson.dumps(READ_ARGS).decode()},
        }
    ]
    out, log = run(completion({"content": None, "tool_calls": calls}, finish="tool_calls"))
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "functions.read:3" and call["function"]["arguments"] == READ_ARGS
    assert {"ids.response", "args.double_encoded"} <= set(log.kinds())


def test_usage_in_choice_and_tool_calls_with_empty_list():
    usage = {"total_tokens": 3}
    out, log = run(completion({"content": "hi", "tool_calls": []}, finish="tool_calls", usage=usage))
    assert "usage.hoisted" in log.kinds()
    assert out["usage"] == usage
    assert out["choices"][0]["finish_reason"] == "stop"


def test_clean_response_is_untouched():
    body = completion(
        {
            "content": None,
            "tool_calls": [
                {"id": "functions.read:3", "type": "function", "function": {"name": "read", "arguments": READ_ARGS}}
            ],
        },
        finish="tool_calls",
    )
    new, log, _ = repair_completion_body(orjson.dumps(body), FACTS, POLICY)
    assert new is None and not log


def test_invalid_json_is_left_alone():
    new, log, why = repair_completion_body(b"<html>", FACTS, POLICY)
    assert new is None and not log and "not valid JSON" in why
