"""Kimi K3 markup in text (vLLM/SGLang/TensorRT-LLM K3 parsers' grammar), the answer in reasoning,
calls sent twice, and cut calls, through the stream repairer at every cut across events."""

import orjson
import pytest
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response import k3_markup as k3
from kimiwire.wire.response.completion_repair import repair_completion_object
from kimiwire.wire.response.markup import CONTENT, REASONING, MarkupScanner
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.conversations import TOOLS
from tests.support.piai_model import guide_accumulate, piai_parse
from tests.support.streams import Stream, tool_delta

TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
POLICY = Policy.build(Flavor.SELFHOSTED)
KNOWN = frozenset(TOOL_SCHEMAS)

CALL_READ = (
    '<|open|>call tool="read" index="1"<|sep|>'
    '<|open|>argument key="path" type="string"<|sep|>a "q".py<|close|>argument<|sep|>'
    '<|open|>argument key="limit" type="number"<|sep|>30<|close|>argument<|sep|>'
    '<|open|>argument key="all" type="boolean"<|sep|>true<|close|>argument<|sep|>'
    "<|close|>call<|sep|>"
)
CALL_EXEC = (
    '<|open|>call tool="exec" index="2"<|sep|>'
    '<|open|>json type="object"<|sep|>{"command":"ls -la","env":{"A":[1,null]}}<|close|>json<|sep|>'
    "<|close|>call<|sep|>"
)
SECTION = "<|open|>tools<|sep|>" + CALL_READ + CALL_EXEC + "<|close|>tools<|sep|>"
READ_VALUE = {"path": 'a "q".py', "limit": 30, "all": True}
EXEC_VALUE = {"command": "ls -la", "env": {"A": [1, None]}}


def scan(pieces, field=CONTENT, known=KNOWN, copy=False):
    scanner = MarkupScanner(known, field, keep_copy=copy)
    own, moved, calls = "", "", []
    for piece in [*pieces, None]:
        text, found = scanner.finish() if piece is None else scanner.feed(piece)
        own += text
        moved += "".join(scanner.moved)
        scanner.moved.clear()
        calls += [(c.name, orjson.loads(c.arguments), c.form) for c in found]
    return own, moved, calls


def test_grammar_typed_values_escaped_attributes_and_json_block():
    section = k3.decode_section(CALL_READ + CALL_EXEC.replace('tool="exec"', 'tool="a&amp;b&quot;"'))
    assert [(c.name, orjson.loads(c.arguments)) for c in section.calls] == [
        ("read", READ_VALUE),
        ('a&b"', EXEC_VALUE),
    ]
    # as vLLM and SGLang write arguments: json.dumps(..., ensure_ascii=False)
    assert section.calls[0].arguments == '{"path": "a \\"q\\".py", "limit": 30, "all": true}'
    assert not section.incomplete


def test_tools_channel_recovered_at_every_split():
    full = "Sure." + SECTION + "<|close|>message<|sep|><|end_of_msg|>"
    expected = ("Sure.", "", [("read", READ_VALUE, "k3"), ("exec", EXEC_VALUE, "k3")])
    for cut in range(len(full) + 1):
        assert scan([full[:cut], full[cut:]]) == expected, cut
    for cut in range(0, len(full) - 3, 3):  # three pieces
        assert scan([full[:cut], full[cut : cut + 3], full[cut + 3 :]]) == expected, cut


def test_spaced_markers_from_a_detokenizer():
    spaced = SECTION.replace("<|open|>tools<|sep|>", "<|open|> tools <|sep|>").replace(
        "<|close|>tools<|sep|>", "<|close|> tools <|sep|>"
    )
    assert scan([spaced])[2] == [("read", READ_VALUE, "k3"), ("exec", EXEC_VALUE, "k3")]


def test_unknown_tool_or_no_known_tools_leaves_the_section_as_sent():
    section = SECTION.replace('tool="exec"', 'tool="rm"')
    assert scan([section]) == (section, "", [])
    assert scan([SECTION], known=frozenset()) == (SECTION, "", [])


def test_cut_call_goes_out_as_text_and_complete_calls_are_recovered():
    cut = "<|open|>tools<|sep|>" + CALL_READ + CALL_EXEC[:60]
    scanner = MarkupScanner(KNOWN)
    text, calls = scanner.feed(cut)
    more, rest = scanner.finish()
    assert text + more == CALL_EXEC[:60]
    assert [c.name for c in calls + rest] == ["read"]
    assert scanner.cut_call


def test_channels_move_text_between_fields_at_every_split():
    content = (
        "<|open|>think<|sep|>Let me see.<|close|>think<|sep|><|open|>response<|sep|>Hello!<|close|>response<|sep|>"
    )
    for cut in range(len(content) + 1):
        own, moved, _ = scan([content[:cut], content[cut:]])
        assert (own, moved) == ("Hello!", "Let me see."), cut
    reasoning = "Let me see.<|close|>think<|sep|><|open|>response<|sep|>Hello!<|close|>response<|sep|>"
    for cut in range(len(reasoning) + 1):
        own, moved, _ = scan([reasoning[:cut], reasoning[cut:]], REASONING)
        assert (own, moved) == ("Let me see.", "Hello!"), cut


def test_answer_in_reasoning_is_sent_again_as_content():
    # sgl-project/sglang PR #33995: `reasoning_content` holds `...answer...<|close|>response<|sep|>...`
    text = "The answer is 42.<|close|>response<|sep|><|close|>message<|sep|>"
    for cut in range(len(text) + 1):
        own, moved, _ = scan([text[:cut], text[cut:]], REASONING, copy=True)
        assert moved == "The answer is 42.", cut
        assert own == text[: min(cut, len("The answer is 42."))] or own == "", cut


# -- streams --------------------------------------------------------------------------------


def k3_facts(**extra) -> RequestFacts:
    return RequestFacts(0, dict(TOOL_SCHEMAS), True, True, k3_model=True, **extra)


def run(body: bytes, facts: RequestFacts, cuts=()):
    repairer = StreamRepairer(facts, POLICY)
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        out += repairer.feed(body[a:b])
    out += repairer.end()
    return b"".join(out), repairer


def token_stream(texts: list[tuple[str, str]], finish: str = "stop", model: str = "kimi-k3") -> bytes:
    stream = Stream(model=model).chunk({"role": "assistant", "content": ""})
    for key, text in texts:
        stream.chunk({key: text})
    return stream.chunk({}, finish).done().body()


def pieces(key: str, text: str, size: int) -> list[tuple[str, str]]:
    return [(key, text[i : i + size]) for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_k3_tools_channel_in_content_becomes_calls_for_both_clients(size):
    text = "<|open|>response<|sep|>Reading.<|close|>response<|sep|>" + SECTION + "<|close|>message<|sep|>"
    body = token_stream([("reasoning_content", "think"), *pieces("content", text, size)])
    out, repairer = run(body, k3_facts())
    parsed = piai_parse(out)
    assert parsed["text"] == "Reading."
    assert [(i, n, a) for i, n, a in parsed["calls"]] == [
        ("functions.read:0", "read", READ_VALUE),
        ("functions.exec:1", "exec", EXEC_VALUE),
    ]
    assert parsed["stop"] == "toolUse"
    assert [(n, orjson.loads(a)) for _, n, a in guide_accumulate(out)] == [("read", READ_VALUE), ("exec", EXEC_VALUE)]
    assert "<|" not in out.decode()
    assert repairer.log.counts()["markup.recovered_k3"] == 2


def test_byte_cuts_of_a_k3_stream_give_the_same_result():
    text = "Sure." + SECTION
    body = token_stream([("reasoning_content", "hm<|close|>think<|sep|>"), *pieces("content", text, 9)])
    reference = piai_parse(run(body, k3_facts())[0])
    assert len(reference["calls"]) == 2 and reference["text"] == "Sure." and reference["thinking"] == "hm"
    for cut in range(1, len(body), 7):  # TCP cuts all over the body (the text splits are in the events)
        assert piai_parse(run(body, k3_facts(), [cut])[0]) == reference, cut


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_answer_in_reasoning_reaches_content_and_the_turn_counts_as_answered(size):
    answer = "The answer is 42."
    text = answer + "<|close|>response<|sep|><|close|>message<|sep|>"
    body = token_stream(pieces("reasoning_content", text, size))
    out, repairer = run(body, k3_facts())
    parsed = piai_parse(out)
    assert parsed["text"] == answer
    assert repairer.turn.content
    assert "<|" not in out.decode()


def test_answer_in_reasoning_with_the_fast_path_taking_the_first_events():
    # the first events are plain reasoning the fast path may take: the copy must still hold them
    stream = Stream(model="kimi-k3").chunk({"role": "assistant", "content": ""})
    for word in ["The ", "answer ", "is ", "42."]:
        stream.chunk({"reasoning_content": word})
    body = stream.chunk({"reasoning_content": "<|close|>response<|sep|>"}).chunk({}, "stop").done().body()
    chunks = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    repairer = StreamRepairer(k3_facts(), POLICY)
    out = []
    for chunk in chunks:
        out += repairer.feed(chunk)
    out += repairer.end()
    assert piai_parse(b"".join(out))["text"] == "The answer is 42."


def native_then_resend(finish: str = "tool_calls") -> bytes:
    """vLLM 0.11.1-0.13.0: calls streamed as tool_calls, then at `<|tool_calls_section_end|>` the
    parser's buffer (text before the section, call markup without section markers) as content."""
    read = '{"path": "a.py"}'
    stream = Stream().chunk({"role": "assistant", "content": ""}).chunk({"content": "Let me read."})
    stream.chunk(tool_delta(0, "functions.read:0", "read", ""))
    stream.chunk(tool_delta(0, None, None, read))
    stream.chunk(
        {
            "content": "Let me read.<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>"
            + read
            + "<|tool_call_end|>"
        }
    )
    return stream.chunk({}, finish).done().body()


def test_a_call_resent_as_markup_is_delivered_once_and_the_resent_text_dropped():
    out, repairer = run(native_then_resend(), RequestFacts(0, dict(TOOL_SCHEMAS), True, True))
    parsed = piai_parse(out)
    assert [(n, a) for _, n, a in parsed["calls"]] == [("read", {"path": "a.py"})]
    assert parsed["text"] == "Let me read."
    assert repairer.log.counts()["markup.repeated_call"] == 1
    assert repairer.log.counts()["text.repeated"] == 1


def test_a_different_call_in_markup_is_still_recovered():
    body = native_then_resend().replace(b'a.py\\"}<|tool_call_end', b'b.py\\"}<|tool_call_end')
    out, _ = run(body, RequestFacts(0, dict(TOOL_SCHEMAS), True, True))
    assert [a for _, _, a in piai_parse(out)["calls"]] == [{"path": "a.py"}, {"path": "b.py"}]


@pytest.mark.parametrize("finish", ["tool_calls", "stop", None])
def test_a_cut_call_never_leaves_under_tool_calls(finish):
    stream = Stream().chunk({"role": "assistant", "content": ""})
    stream.chunk(tool_delta(0, "functions.write:0", "write", '{"path": "a", "content": "partial te'))
    stream.chunk({}, finish) if finish else None
    out, repairer = run(stream.done().body(), RequestFacts(0, dict(TOOL_SCHEMAS), True, True))
    parsed = piai_parse(out)
    assert parsed["stop"] == "length"
    assert [n for _, n, _ in parsed["calls"]] == ["write"]  # as sent
    assert b"partial te" in out
    if finish:
        assert repairer.log.counts()["finish_reason.cut_call"] == 1


def test_non_streamed_k3_message():
    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "The answer.<|close|>response<|sep|>" + SECTION,
                },
            }
        ]
    }
    log = repair_completion_object(body, k3_facts(), POLICY)
    message = body["choices"][0]["message"]
    assert message["content"] == "The answer."
    assert message["reasoning_content"] in ("", None)
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["read", "exec"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert log.counts()["markup.recovered_k3"] == 2


@pytest.mark.parametrize("size", [1, 3, 100])
def test_think_tags_at_the_edges_of_the_reasoning_field_are_removed(size):
    reasoning = "<think>Let me think. A </think> inside stays.</think>\n"
    body = token_stream([*pieces("reasoning_content", reasoning, size), ("content", "Answer.")])
    out, repairer = run(body, RequestFacts(0, dict(TOOL_SCHEMAS), True, True))
    parsed = piai_parse(out)
    assert parsed["thinking"] == "Let me think. A </think> inside stays."
    assert parsed["text"] == "Answer."
    kinds = repairer.log.kinds()
    assert "think.reasoning_edge_open" in kinds and "think.reasoning_edge_close" in kinds


def test_a_think_tag_later_in_reasoning_is_not_an_edge():
    body = token_stream([("reasoning_content", "First."), ("reasoning_content", "<think>x")])
    parsed = piai_parse(run(body, RequestFacts())[0])
    assert parsed["thinking"] == "First.<think>x"


@pytest.mark.parametrize("model_is_k3", [True, False])
def test_an_answer_found_in_reasoning_opens_the_retry_gate(model_is_k3):
    """Even when the answer had already gone out as reasoning and could not be sent again (a model
    name that does not say K3), the turn is answered: never retried as reasoning-only."""
    from kimiwire.mitm.stream_callable import RepairingStream
    from kimiwire.wire.retry.turn_gate import TurnGate

    facts = RequestFacts(0, {}, False, True, k3_model=model_is_k3)
    gate = TurnGate(facts, frozenset({"empty", "reasoning_only"}), hold_calls=False)
    stream = RepairingStream(StreamRepairer(facts, POLICY), gate=gate)
    body = token_stream(
        [("reasoning_content", "The answer is 42."), ("reasoning_content", "<|close|>response<|sep|>")],
        model="kimi-k3" if model_is_k3 else "kimi-latest",
    )
    out = b"".join(b"".join(stream(e + b"\n\n")) for e in body.split(b"\n\n") if e) + b"".join(stream(b""))
    assert gate.verdict() is None and gate.proven
    assert b"data: [DONE]" in out
    assert (piai_parse(out)["text"] == "The answer is 42.") is model_is_k3


def test_an_unnamed_close_and_end_of_message_are_removed():
    assert scan(["Done.<|close|><|sep|><|end_of_msg|>"]) == ("Done.", "", [])
    assert scan(["a <|close|>  <|sep|>b"]) == ("a b", "", [])


def test_non_streamed_k3_call_cut_off_ends_with_length():
    text = "<|open|>tools<|sep|>" + CALL_READ + CALL_EXEC[:50]
    body = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    log = repair_completion_object(body, k3_facts(), POLICY)
    choice = body["choices"][0]
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["read"]
    assert choice["message"]["content"] == CALL_EXEC[:50]  # the cut call, as sent
    assert choice["finish_reason"] == "length" and log.counts()["finish_reason.cut_call"] == 1
