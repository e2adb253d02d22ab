"""The simulator's failed-parsing shapes reproduce the public reports' bytes."""

import orjson
from kimiwire.sim.model import plan_turn
from kimiwire.sim.settings import SimSettings
from kimiwire.sim.shapes import DONE, completion_body, stream_chunks

from tests.support.conversations import TOOLS

TASK = {"role": "user", "content": "read /w/a.txt and read /w/b.txt"}
HISTORY = [
    {"role": "user", "content": "read /w/a.txt then read /w/b.txt"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "functions.read:0",
                "type": "function",
                "function": {"name": "read", "arguments": '{"path": "/w/a.txt"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "functions.read:0", "content": "A"},
]


def message(body, **settings):
    plan = plan_turn(body, history_tools=settings.get("leak") == "untooled")
    return completion_body(plan, SimSettings(**settings), "m")["choices"][0]


def streamed_content(body, **settings):
    plan = plan_turn(body)
    chunks = [c for c in stream_chunks(plan, SimSettings(**settings), "m", False) if c != DONE]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    return [d["content"] for d in deltas if d.get("content")], deltas


def test_consumed_begin_markers_typeclaw_344():
    choice = message({"messages": [TASK], "tools": TOOLS}, leak="consumed")
    assert choice["message"]["content"] == (
        'read:0<|tool_call_argument_begin|>{"path":"/w/a.txt"}'
        'read:1<|tool_call_argument_begin|>{"path":"/w/b.txt"}<|tool_calls_section_end|>'
    )
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
    functions = message({"messages": [TASK], "tools": TOOLS}, leak="consumed-functions")
    assert functions["message"]["content"].startswith("functions.read:0<|tool_call_argument_begin|>")


def test_markup_inside_arguments_opencode_37297():
    choice = message({"messages": [TASK], "tools": TOOLS}, leak="in-arguments")
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["arguments"].startswith('{"path": "<|tool_calls_section_begin|><|tool_call_begin|>')
    assert choice["finish_reason"] == "tool_calls"


def test_untooled_request_gets_bare_text_only_without_tools():
    choice = message({"messages": HISTORY, "tools": []}, leak="untooled")
    assert choice["message"]["content"] == 'functions.read:1{"path":"/w/b.txt"}'
    with_tools = message({"messages": HISTORY, "tools": TOOLS}, leak="untooled")
    assert [c["function"]["name"] for c in with_tools["message"]["tool_calls"]] == ["read"]


def test_reasoning_as_content_with_split_tags():
    pieces, deltas = streamed_content({"messages": [{"role": "user", "content": "hi"}]}, think="prefilled")
    text = "".join(pieces)
    assert "</think>" in text and "<think>" not in text
    assert "</think>" not in pieces  # the tag is split across chunks
    assert not any("reasoning_content" in d or "reasoning" in d for d in deltas)
    block, _ = streamed_content({"messages": [{"role": "user", "content": "hi"}]}, think="block")
    assert "".join(block).startswith("<think>")


def test_settings_reject_unknown_values():
    for text in ("leak=sometimes", "think=maybe"):
        try:
            SimSettings().with_overrides(text)
        except ValueError:
            continue
        raise AssertionError(text)
    assert orjson.dumps(SimSettings().with_overrides("leak=consumed, think=block").leak) == b'"consumed"'


def test_k3_tools_channel_as_content():
    choice = message({"messages": [TASK], "tools": TOOLS}, leak="k3-tools")
    content = choice["message"]["content"]
    assert content.startswith("<|open|>response<|sep|>")
    call = '<|open|>call tool="read" index="1"<|sep|><|open|>argument key="path" type="string"<|sep|>/w/a.txt'
    assert call in content
    assert content.endswith("<|close|>tools<|sep|><|close|>message<|sep|>")
    assert "tool_calls" not in choice["message"]


def test_k3_answer_in_reasoning():
    choice = message({"messages": [{"role": "user", "content": "hi"}]}, leak="k3-answer-in-reasoning")
    assert not choice["message"]["content"]
    assert choice["message"]["reasoning_content"].endswith("<|close|>response<|sep|><|close|>message<|sep|>")


def test_vllm_resend_at_section_end_and_cut_call_misreported():
    pieces, deltas = streamed_content({"messages": [TASK], "tools": TOOLS}, leak="resend")
    assert "<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>" in pieces[-1]
    assert any(d.get("tool_calls") for d in deltas)
    choice = message({"messages": [TASK], "tools": TOOLS}, leak="cut-call")
    arguments = choice["message"]["tool_calls"][-1]["function"]["arguments"]
    assert not arguments.endswith("}") and choice["finish_reason"] == "tool_calls"
