"""Real-world quirks repaired in streams and JSON: markup with consumed begin markers, bare calls
with tool history but no tools, markup inside a call's arguments, reasoning that arrives as content
with think tags. Each shape is the public report's bytes; streams are checked at every byte cut."""

import orjson
import pytest
from kimiwire.wire.codecs.sse import SSEDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.completion_repair import repair_completion_object
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.conversations import TOOLS
from tests.support.streams import Stream, fragments, tool_delta

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
POLICY = Policy.build(Flavor.SELFHOSTED)
A = '{"path": "/w/a.txt"}'
B = '{"path": "/w/b.txt"}'


def facts(history=1, tools=True, names=("read",), prefilled=False):
    return RequestFacts(history, dict(SCHEMAS) if tools else {}, tools, True, list(names), prefilled)


def view(body: bytes) -> dict:
    """What an accumulating client ends up with."""
    decoder = SSEDecoder()
    out = {"reasoning": "", "content": "", "calls": {}, "finish": None}
    for event in decoder.feed(body) + decoder.end():
        if event.data is None or event.data == b"[DONE]":
            continue
        for choice in orjson.loads(event.data).get("choices") or []:
            delta = choice.get("delta") or {}
            out["reasoning"] += (delta.get("reasoning_content") or "") + (delta.get("reasoning") or "")
            out["content"] += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                entry = out["calls"].setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or tc.get("id")
                entry["name"] += (tc.get("function") or {}).get("name") or ""
                entry["arguments"] += (tc.get("function") or {}).get("arguments") or ""
            out["finish"] = choice.get("finish_reason") or out["finish"]
    out["calls"] = [(c["id"], c["name"], orjson.loads(c["arguments"])) for _, c in sorted(out["calls"].items())]
    return out


def repaired(body: bytes, request: RequestFacts, policy: Policy = POLICY, cut: int | None = None):
    repairer = StreamRepairer(request, policy)
    pieces = [body] if cut is None else [body[:cut], body[cut:]]
    out = [chunk for piece in pieces for chunk in repairer.feed(piece)] + repairer.end()
    return b"".join(out), repairer


def at_every_cut(body: bytes, request: RequestFacts, expected: dict) -> list[str]:
    whole, repairer = repaired(body, request)
    assert {k: view(whole)[k] for k in expected} == expected
    for cut in range(1, len(body), 5):  # TCP cuts all over the body (the text splits are in the events)
        split, _ = repaired(body, request, cut=cut)
        assert view(split) == view(whole), cut
    return [e.kind for e in repairer.log.entries]


def text_stream(text: str, size: int = 5, reasoning: str | None = None, key="reasoning_content") -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    if reasoning:
        s.chunk({key: reasoning})
    for i in range(0, len(text), size):
        s.chunk({"content": text[i : i + size]})
    return s.chunk({}, "stop").done()


# typeclaw PR #344: a K2.6 router consumed the section and call begin markers.
CONSUMED = f"read:1<|tool_call_argument_begin|>{A}read:2<|tool_call_argument_begin|>{B}<|tool_calls_section_end|>"
CALLS = [("functions.read:1", "read", {"path": "/w/a.txt"}), ("functions.read:2", "read", {"path": "/w/b.txt"})]


@pytest.mark.parametrize("prefix", ["", "functions."])
def test_consumed_begin_markers_become_calls(prefix):
    text = "Reading both. " + CONSUMED.replace("read:", prefix + "read:")
    kinds = at_every_cut(
        text_stream(text).body(), facts(), {"calls": CALLS, "content": "Reading both. ", "finish": "tool_calls"}
    )
    assert kinds.count("markup.recovered_consumed") == 2


def test_bare_calls_with_tool_history_and_tools_empty():
    # pi-ai sends `tools: []` after tool history; SGLang then parses no calls and skips special tokens.
    text = f"functions.read:1{A}"
    at_every_cut(
        text_stream(text).body(),
        facts(tools=False),
        {"calls": CALLS[:1], "content": "", "finish": "tool_calls"},
    )


def nested_call_stream(arguments: str) -> Stream:
    # vLLM 0.24 + K2.6 (anomalyco/opencode#37297): the model opened a new tool section inside the
    # first call's string value, and the parser streamed it as that call's arguments.
    s = Stream().chunk({"role": "assistant", "content": ""}).chunk({"reasoning": "Read both."})
    s.chunk(tool_delta(0, "functions.read:1", "read"))
    for piece in fragments(arguments, 9):
        s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    return s.chunk({}, "tool_calls").done()


NESTED = (
    '{"path": "<|tool_calls_section_begin|>'
    f"<|tool_call_begin|>functions.read:2<|tool_call_argument_begin|>{A}<|tool_call_end|>"
    f"<|tool_call_begin|>functions.read:3<|tool_call_argument_begin|>{B}<|tool_call_end|>"
    "<|tool_calls_section_end|>"
)


def test_markup_inside_arguments_becomes_the_embedded_calls():
    kinds = at_every_cut(nested_call_stream(NESTED).body(), facts(), {"calls": CALLS, "finish": "tool_calls"})
    assert "markup.in_arguments" in kinds


def test_markup_inside_arguments_with_a_cut_embedded_call_delivers_no_call():
    cut = NESTED[: NESTED.index("/w/b")]
    whole, repairer = repaired(nested_call_stream(cut).body(), facts())
    seen = view(whole)
    assert seen["calls"] == CALLS[:1]  # the complete one only, never the outer call with markup
    assert b"tool_call_begin" not in whole
    assert "markup.in_arguments_incomplete" in [e.kind for e in repairer.log.entries]


# smg-project/smg#1873: the K2.5/K2.6 template prefilled <think>; the engine's parser did not know.
PREFILLED = "The user wants a greeting. Keep it short.</think>Hello! How can I help?"


def test_prefilled_reasoning_in_content_is_split():
    kinds = at_every_cut(
        text_stream(PREFILLED).body(),
        facts(prefilled=True),
        {"reasoning": "The user wants a greeting. Keep it short.", "content": "Hello! How can I help?"},
    )
    assert "think.close_tag" in kinds


def test_whole_think_block_in_content_is_split_for_any_model():
    # vllm PR #32490: an earlier </think> in the prompt ends reasoning before it starts.
    at_every_cut(
        text_stream("<think>Short thought.</think>The answer.").body(),
        facts(),
        {"reasoning": "Short thought.", "content": "The answer."},
    )


def test_close_tag_after_reasoning_in_its_own_field_uses_that_field():
    body = text_stream("</think>The answer.", reasoning="Thought.", key="reasoning").body()
    whole, _ = repaired(body, facts(prefilled=True))
    assert b'"reasoning_content"' not in whole
    assert view(whole)["content"] == "The answer." and view(whole)["reasoning"] == "Thought."


def test_prefilled_text_without_close_tag_reaches_the_client_as_content():
    whole, _ = repaired(text_stream("Just the answer.").body(), facts(prefilled=True))
    assert view(whole)["content"] == "Just the answer."


def test_ordinary_content_is_untouched():
    body = text_stream("Hello! How are you today? Fine.", reasoning="Greet.").body()
    assert repaired(body, facts(prefilled=True))[0] == body
    with_angle = text_stream("Hello! a < b and c > d.").body()
    assert view(repaired(with_angle, facts())[0])["content"] == "Hello! a < b and c > d."


def test_think_tags_keep():
    body = text_stream("<think>x</think>y").body()
    assert view(repaired(body, facts(), Policy.build(Flavor.SELFHOSTED, think_tags="keep"))[0])["content"] == (
        "<think>x</think>y"
    )


def completion(message: dict, finish: str = "stop") -> dict:
    return {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def test_json_responses_get_the_same_repairs():
    body = completion({"role": "assistant", "content": "ok " + CONSUMED})
    repair_completion_object(body, facts(), POLICY)
    message = body["choices"][0]["message"]
    assert [(c["id"], c["function"]["name"]) for c in message["tool_calls"]] == [c[:2] for c in CALLS]
    assert message["content"] == "ok " and body["choices"][0]["finish_reason"] == "tool_calls"

    nested = {"id": "functions.read:1", "type": "function", "function": {"name": "read", "arguments": NESTED}}
    body = completion({"role": "assistant", "content": None, "tool_calls": [nested]}, "tool_calls")
    log = repair_completion_object(body, facts(), POLICY)
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], orjson.loads(c["function"]["arguments"])) for c in calls] == [(c[0], c[2]) for c in CALLS]
    assert "markup.in_arguments" in [e.kind for e in log.entries]

    body = completion({"role": "assistant", "content": PREFILLED})
    repair_completion_object(body, facts(), POLICY)
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == "The user wants a greeting. Keep it short."
    assert message["content"] == "Hello! How can I help?"


def test_json_outer_call_with_only_a_cut_embedded_call_is_not_delivered():
    nested = {"id": "x", "type": "function", "function": {"name": "read", "arguments": NESTED[:60]}}
    body = completion({"role": "assistant", "content": None, "tool_calls": [nested]}, "tool_calls")
    repair_completion_object(body, facts(), POLICY)
    choice = body["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
