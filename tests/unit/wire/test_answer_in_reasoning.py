"""With thinking switched off, an answer an engine's reasoning parser files as reasoning goes out as
content (SGLang 0.5.5, vLLM 0.10.2: wire/response/answer_in_reasoning.py), only where thinking is
known off; and vLLM 0.13's re-sent reasoning and text at the tool section's end is not sent twice."""

from __future__ import annotations

from typing import Any

import pytest
from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.request.repair import facts_from_body
from kimiwire.wire.response.completion_repair import repair_completion_object
from kimiwire.wire.response.stream_repair import StreamRepairer, repeats_across_think
from kimiwire.wire.retry.turn_gate import TurnGate
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.piai_model import guide_accumulate, piai_parse
from tests.support.streams import Stream

TOOLS = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}]
CALL = (
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>"
    '{"path": "/a"}<|tool_call_end|><|tool_calls_section_end|>'
)


def request(model: str = "kimi-k2.5", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "stream": True, **fields}


OFF = facts_from_body(request(chat_template_kwargs={"thinking": False}))
SELFHOSTED = Policy.build(Flavor.SELFHOSTED)


def reasoning_stream(pieces: list[str], key: str = "reasoning_content", finish: str = "stop") -> bytes:
    s = Stream(model="kimi-k2.5").chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        s.chunk({key: piece})
    return s.chunk({}, finish).done().body()


def run(body: bytes, facts: RequestFacts = OFF, policy: Policy = SELFHOSTED) -> tuple[bytes, StreamRepairer]:
    repairer = StreamRepairer(facts, policy)
    out: list[bytes] = []
    for event in body.split(b"\n\n"):
        if event:
            out += repairer.feed(event + b"\n\n")
    out += repairer.end()
    return b"".join(out), repairer


@pytest.mark.parametrize(
    "fields",
    [
        {"chat_template_kwargs": {"thinking": False}},
        {"thinking": {"type": "disabled"}},
        {"enable_thinking": False},
        {"reasoning_effort": "none"},
    ],
)
def test_thinking_is_known_off_only_from_an_explicit_switch_on_a_switch_model(fields):
    assert facts_from_body(request(**fields)).thinking_off
    assert not facts_from_body(request()).thinking_off  # on by default
    assert not facts_from_body(request(chat_template_kwargs={"thinking": True})).thinking_off
    assert not facts_from_body(request("kimi-k2-thinking", **fields)).thinking_off  # always thinks
    assert RequestFacts.from_dict(OFF.as_dict()).thinking_off


def test_sglang_055_whole_answer_and_call_markup_in_reasoning_become_text_and_a_call():
    pieces = ["Read", "ing it.", *[CALL[i : i + 5] for i in range(0, len(CALL), 5)]]
    out, repairer = run(reasoning_stream(pieces))
    parsed = piai_parse(out)
    assert (parsed["text"], parsed["thinking"], parsed["stop"]) == ("Reading it.", "", "toolUse")
    assert [(name, args) for _, name, args in guide_accumulate(out)] == [("read", '{"path": "/a"}')]
    assert "reasoning.answer_when_thinking_off" in repairer.log.kinds()
    assert repairer.turn.content and not repairer.turn.reasoning


def test_vllm_0102_first_step_as_reasoning_then_content_keeps_order():
    body = (
        Stream(model="kimi-k2.5")
        .chunk({"role": "assistant", "content": ""})
        .chunk({"reasoning_content": "H", "content": None})
        .chunk({"content": "ello there."})
        .chunk({}, "stop")
        .done()
        .body()
    )
    parsed = piai_parse(run(body)[0])
    assert (parsed["text"], parsed["thinking"]) == ("Hello there.", "")


def test_mirrored_reasoning_names_move_once():
    body = (
        Stream(model="kimi-k2.5")
        .chunk({"reasoning": "Hi.", "reasoning_content": "Hi."})
        .chunk({}, "stop")
        .done()
        .body()
    )
    assert piai_parse(run(body)[0])["text"] == "Hi."


@pytest.mark.parametrize(
    ("facts", "policy"),
    [
        (facts_from_body(request()), SELFHOSTED),  # thinking on (the default): real reasoning
        (facts_from_body(request("kimi-k2-thinking", chat_template_kwargs={"thinking": False})), SELFHOSTED),
        (OFF, Policy.build(Flavor.MOONSHOT)),  # a server that may ignore the switch
        (OFF, Policy.build(Flavor.DEEPINFRA)),
        (OFF, Policy.build(Flavor.SELFHOSTED, think_tags="keep")),
    ],
)
def test_reasoning_stays_reasoning_unless_thinking_is_known_off_on_a_selfhosted_engine(facts, policy):
    out, repairer = run(reasoning_stream(["The user ", "wants it."]), facts, policy)
    parsed = piai_parse(out)
    assert (parsed["text"], parsed["thinking"]) == ("", "The user wants it.")
    assert "reasoning.answer_when_thinking_off" not in repairer.log.kinds()


def test_an_answer_in_reasoning_with_thinking_off_is_never_retried_as_reasoning_only():
    gate = TurnGate(OFF, frozenset({"empty", "reasoning_only"}), hold_calls=False)
    stream = RepairingStream(StreamRepairer(OFF, SELFHOSTED), gate=gate)
    body = reasoning_stream(["Hello ", "there."])
    out = b"".join(b"".join(stream(e + b"\n\n")) for e in body.split(b"\n\n") if e) + b"".join(stream(b""))
    assert gate.verdict() is None
    assert piai_parse(out)["text"] == "Hello there."
    # the same stream with thinking on is a reasoning-only turn: the gate can fail
    on = facts_from_body(request())
    gate = TurnGate(on, frozenset({"empty", "reasoning_only"}), hold_calls=False)
    stream = RepairingStream(StreamRepairer(on, SELFHOSTED), gate=gate)
    for e in body.split(b"\n\n"):
        if e:
            stream(e + b"\n\n")
    stream(b"")
    assert gate.verdict() is not None and gate.verdict().kind == "reasoning_only"


def test_non_streamed_answer_in_reasoning_with_thinking_off_becomes_content_and_a_call():
    def message() -> dict[str, Any]:
        return {"role": "assistant", "content": None, "reasoning_content": "Reading it." + CALL}

    body = {"choices": [{"index": 0, "finish_reason": "stop", "message": message()}]}
    log = repair_completion_object(body, OFF, SELFHOSTED)
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Reading it."
    assert "reasoning_content" not in choice["message"]
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["read"]
    assert choice["finish_reason"] == "tool_calls"
    assert "reasoning.answer_when_thinking_off" in log.kinds()
    untouched = {"choices": [{"index": 0, "finish_reason": "stop", "message": message()}]}
    repair_completion_object(untouched, facts_from_body(request()), SELFHOSTED)
    assert untouched["choices"][0]["message"].get("content") is None  # thinking on: reasoning it is
    assert untouched["choices"][0]["message"]["reasoning_content"] == "Reading it."


def test_text_repeated_across_think_is_an_end_of_reasoning_then_an_end_of_content():
    assert repeats_across_think("wants the file.Reading it.", "The user wants the file.", "Reading it.")
    assert repeats_across_think("file.", "The user wants the file.", "")
    assert not repeats_across_think("wants the file.Reading it!", "The user wants the file.", "Reading it.")
    assert not repeats_across_think("New text.Reading it.", "The user wants the file.", "Reading it.")
    assert not repeats_across_think("x" * 5000, "x" * 2048, "x" * 2048)  # longer than both tails: not a repeat
    assert not repeats_across_think("Reading it.", "", "Reading it.")


def test_vllm_013_resent_reasoning_think_and_text_is_dropped_but_new_text_is_kept():
    def body(resent: str) -> bytes:
        s = Stream(model="kimi-k2.5").chunk({"role": "assistant", "content": ""})
        for piece in ("The user ", "wants it.", "</think>", "Reading ", "it."):
            s.chunk({"content": piece})
        s.chunk(
            {"tool_calls": [{"index": 0, "id": "functions.read:0", "type": "function", "function": {"name": "read"}}]}
        )
        s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"path": "/a"}'}}]})
        s.chunk(
            {
                "content": resent
                + CALL.removeprefix("<|tool_calls_section_begin|>").removesuffix("<|tool_calls_section_end|>")
            }
        )
        return s.chunk({}, "tool_calls").done().body()

    on = facts_from_body(request())
    out, repairer = run(body("The user wants it.</think>Reading it."), on)
    parsed = piai_parse(out)
    assert (parsed["thinking"], parsed["text"]) == ("The user wants it.", "Reading it.")
    assert [name for _, name, _ in guide_accumulate(out)] == ["read"]
    assert "text.repeated" in repairer.log.kinds()
    out, _ = run(body("Something new."), on)
    assert piai_parse(out)["text"] == "Reading it.Something new."
