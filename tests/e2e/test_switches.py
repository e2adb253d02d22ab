"""Every repair can be switched off by its kimi_* option (on by default)."""

import socket

import httpx
import orjson
import pytest
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import POLICY_OPTIONS, Flavor, Policy

from tests.support import streams
from tests.support.conversations import TOOLS, assistant, body, call, tool, user
from tests.support.mitm import Mitmdump
from tests.support.piai_model import piai_parse
from tests.support.streams import READ_ARGS, Stream, tool_delta

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
FACTS = RequestFacts(0, SCHEMAS, True, True)


def test_defaults_are_the_first_choice_and_on():
    policy = Policy.build(Flavor.SELFHOSTED)
    assert {f: getattr(policy, f) for f in POLICY_OPTIONS if f != "reasoning"} == {
        "tool_ids": "canonical",
        "thinking_fields": "translate",
        "history": "repair",
        "request_compat": "fix",
        "tool_stream": "whole",
        "markup": "recover",
        "arguments": "repair",
        "finish": "fix",
        "think_tags": "split",
        "reasoning_field": "keep",
    }


def test_policies_recorded_before_these_options_still_load():
    old = {
        "flavor": "moonshot",
        "tool_ids": "keep",
        "reasoning": "loop",
        "tool_stream": "whole",
        "reasoning_field": "keep",
        "stream_buffer_limit": 4096,
    }
    policy = Policy.from_dict(old)
    assert policy.tool_ids == "keep" and policy.markup == "recover" and policy.flavor is Flavor.MOONSHOT
    assert Policy.from_dict(policy.as_dict()) == policy


def request_after(policy, **extra):
    payload = body([user(), assistant(call("functions.read:0", "read", "")), tool("functions.read:0")], **extra)
    result = repair_request_body(orjson.dumps(payload), policy)
    return orjson.loads(result.body) if result.body else payload


def test_thinking_fields_keep():
    assert "thinking" not in request_after(Policy.build(Flavor.SELFHOSTED), thinking={"type": "enabled"})
    kept = request_after(Policy.build(Flavor.SELFHOSTED, thinking_fields="keep"), thinking={"type": "enabled"})
    assert kept["thinking"] == {"type": "enabled"} and "chat_template_kwargs" not in kept


def test_history_keep():
    def arguments(policy):
        return request_after(policy)["messages"][1]["tool_calls"][0]["function"]["arguments"]

    assert arguments(Policy.build(Flavor.SELFHOSTED)) == "{}"
    assert arguments(Policy.build(Flavor.SELFHOSTED, history="keep")) == ""


def stream_out(raw: bytes, policy: Policy) -> dict:
    repairer = StreamRepairer(FACTS, policy)
    return piai_parse(b"".join([*repairer.feed(raw), *repairer.end()]))


def test_markup_keep():
    raw = streams.markup_leak([("read", READ_ARGS)]).body()
    assert stream_out(raw, Policy.build(Flavor.SELFHOSTED))["calls"]
    kept = stream_out(raw, Policy.build(Flavor.SELFHOSTED, markup="keep"))
    assert not kept["calls"] and "<|tool_call_begin|>" in kept["text"]


def test_arguments_keep():
    raw = Stream().chunk(tool_delta(0, "a", "read", "")).chunk({}, "tool_calls").done().body()
    assert stream_out(raw, Policy.build(Flavor.SELFHOSTED))["calls"][0][2] == {}
    repairer = StreamRepairer(FACTS, Policy.build(Flavor.SELFHOSTED, arguments="keep"))
    out = b"".join([*repairer.feed(raw), *repairer.end()])
    assert b'"arguments":""' in out and "args.empty" not in repairer.log.kinds()


def test_finish_keep_in_streams_and_json():
    raw = Stream().chunk(tool_delta(0, "a", "read", READ_ARGS)).chunk({}, "stop").done().body()
    assert stream_out(raw, Policy.build(Flavor.SELFHOSTED))["stop"] == "toolUse"
    assert stream_out(raw, Policy.build(Flavor.SELFHOSTED, finish="keep"))["stop"] == "stop"
    completion = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "usage": {"total_tokens": 1},
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "functions.read:0",
                            "type": "function",
                            "function": {"name": "read", "arguments": READ_ARGS},
                        }
                    ],
                },
            }
        ]
    }
    new, log, _ = repair_completion_body(
        orjson.dumps(completion), FACTS, Policy.build(Flavor.SELFHOSTED, finish="keep")
    )
    assert new is None and not log


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_json_errors_off_gives_mitmproxys_own_page(tmp_path):
    with Mitmdump(f"http://127.0.0.1:{refused_port()}", tmp_path, {"kimi_json_errors": "false"}) as p:
        r = httpx.post(f"{p.url}/v1/chat/completions", json={"model": "k", "messages": []}, timeout=10)
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")


def test_lazy_connect_off_keeps_mitmproxys_eager_default(tmp_path):
    with (
        Mitmdump(f"http://127.0.0.1:{refused_port()}", tmp_path, {"kimi_lazy_connect": "false"}) as p,
        pytest.raises(httpx.HTTPError),
    ):
        httpx.post(f"{p.url}/v1/chat/completions", json={"model": "k", "messages": []}, timeout=10)
    assert "connection_strategy set to lazy" not in p.output
