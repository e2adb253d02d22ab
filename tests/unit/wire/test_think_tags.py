"""The think-tag splitter: reasoning that arrived as content, split back out, at every split point."""

import pytest
from kimiwire.wire.response.think_tags import LEADING_WHITESPACE_LIMIT, ThinkTagSplitter, split_think_tags

# smg-project/smg#1873, sglang KimiK2Detector without force_reasoning: the K2.5/K2.6 template
# prefilled `<think>`, so the output starts inside reasoning and only writes `</think>`.
PREFILLED = "The user greets me. I should answer briefly.</think>Hello! How can I help?"
# vllm PR #32490: an earlier `</think>` in the prompt ends reasoning, the whole block is content.
BLOCK = "<think>The user greets me.</think>Hello! How can I help?"
REASONING = "The user greets me. I should answer briefly."
ANSWER = "Hello! How can I help?"


def run(pieces, prefilled=False, reasoning_seen=False):
    splitter = ThinkTagSplitter(prefilled)
    if reasoning_seen:
        splitter.reasoning_seen()
    reasoning, content = "", ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c, splitter.events


def splits(text):
    yield [text]
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut : cut + 1], text[cut + 1 :]]


def test_prefilled_reasoning_and_close_tag_at_every_split_point():
    for pieces in splits(PREFILLED):
        assert run(pieces, prefilled=True) == (REASONING, ANSWER, ["think.prefilled", "think.close_tag"]), pieces


def test_whole_block_at_every_split_point():
    for pieces in splits("\n" + BLOCK):
        assert run(pieces) == ("The user greets me.", ANSWER, ["think.open_tag", "think.close_tag"]), pieces


def test_close_tag_after_reasoning_in_its_field_is_dropped():
    for pieces in splits("</think>" + ANSWER):
        assert run(pieces, prefilled=True, reasoning_seen=True) == ("", ANSWER, ["think.orphan_close"]), pieces


def test_ordinary_content_passes_at_once():
    splitter = ThinkTagSplitter()
    for piece in ["Hello", "! How", " can I help?", " a < b", " and c"]:
        reasoning, content = splitter.feed(piece)
        assert reasoning == ""
        assert content == piece
    assert splitter.finish() == ("", "") and splitter.events == []


def test_only_a_tag_prefix_is_held_and_reasoning_flows_at_once():
    splitter = ThinkTagSplitter()
    assert splitter.feed("  <thi") == ("", "")  # may still be <think>
    assert splitter.feed("nk>I am thinking") == ("I am thinking", "")
    assert splitter.feed(" more </th") == (" more ", "")
    assert splitter.pending == "</th"
    assert splitter.feed("ink>Answer <") == ("", "Answer ")
    assert splitter.feed("b>bold</b>") == ("", "<b>bold</b>")


def test_prefilled_output_that_never_closes_is_sent_again_as_content():
    assert run(["Just an ", "answer."], prefilled=True) == (
        "Just an answer.",
        "Just an answer.",
        ["think.prefilled", "think.unclosed_resent"],
    )


def test_a_tool_call_ends_prefilled_reasoning():
    splitter = ThinkTagSplitter(prefilled=True)
    assert splitter.feed("I will read the file.</th") == ("I will read the file.", "")
    assert splitter.end_reasoning() == ("</th", "")
    assert splitter.finish() == ("", "")
    assert "think.unclosed_resent" not in splitter.events


def test_late_close_tag_is_removed():
    for pieces in splits("Hello</think> world"):
        assert run(pieces) == ("", "Hello world", ["think.late_close"]), pieces


def test_leading_whitespace_is_held_only_up_to_the_limit():
    splitter = ThinkTagSplitter()
    assert splitter.feed(" " * LEADING_WHITESPACE_LIMIT) == ("", "")
    assert splitter.feed(" ") == ("", " " * (LEADING_WHITESPACE_LIMIT + 1))
    assert splitter.state == "content"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PREFILLED, (REASONING, ANSWER)),
        (BLOCK, ("The user greets me.", ANSWER)),
        (ANSWER, ("", ANSWER)),
        ("<think>cut short", ("cut short", "")),
    ],
)
def test_whole_messages(text, expected):
    assert split_think_tags(text)[:2] == expected


def test_a_tool_section_ends_prefilled_reasoning_and_stays_content():
    text = "I will read it.<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0"
    for pieces in splits(text):
        reasoning, content, events = run(pieces, prefilled=True)
        assert (reasoning, content) == ("I will read it.", text[len("I will read it.") :]), pieces
        assert "think.unclosed_resent" not in events
