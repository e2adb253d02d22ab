"""A streamed repair has one home, the choice repairer (wire/response/choice_repair.py): the fast
path asks only its readiness question and its text predicate, so it cannot let a text past a
repair, even one it knows nothing about."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response import stream_repair
from kimiwire.wire.response.choice_repair import ChoiceRepairer
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.unit.wire.test_fast_path import NO_TOOLS, POLICY, TOOLS, event, primed

WORD = "secret"


class Redacting(ChoiceRepairer):
    """A new streamed repair, registered in the choice repairer only: `secret` in content goes
    out as `[redacted]`. Its work is in `repair`, its plain-text predicate in `text_passes`."""

    def repair(self, choice: dict[str, Any], chunk: dict[str, Any], after: list[bytes]) -> tuple[bool, bool]:
        changed, keep = super().repair(choice, chunk, after)
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str) and WORD in delta["content"]:
            delta["content"] = delta["content"].replace(WORD, "[redacted]")
            return True, keep
        return changed, keep

    def text_passes(self, key: str, text: str) -> bool:
        return WORD not in text and super().text_passes(key, text)


def delivered(events: list[bytes], facts: RequestFacts, fast: bool) -> tuple[bytes, int]:
    repairer = StreamRepairer(facts, POLICY)
    repairer.fast_path = fast
    out: list[bytes] = []
    taken = 0
    for piece in events:
        if repairer.plain_read(piece):
            taken += 1
            out.append(piece)
        else:
            out += repairer.feed(piece)
    out += repairer.end()
    return b"".join(out), taken


WORDS = st.lists(st.sampled_from(["hello", " ", WORD, "sec", "ret", "x"]), min_size=1, max_size=3).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=15))
def test_a_repair_registered_only_in_the_choice_repairer_is_honoured_on_the_fast_path(texts):
    events = [event({"role": "assistant", "content": ""}), event({"content": "Sure."}), event({"content": " a"})]
    events += [event({"content": text}) for text in texts]
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(stream_repair, "ChoiceRepairer", Redacting)
        fast, taken = delivered(events, TOOLS, True)
        full, _ = delivered(events, TOOLS, False)
    assert fast == full
    assert WORD.encode() not in fast
    assert (b"[redacted]" in fast) == any(WORD in text for text in texts)
    # The fast path took " a" ("Sure." taught it the shape) and every other text
    assert taken == 1 + sum(WORD not in text for text in texts)


def test_without_the_repair_the_same_texts_take_the_fast_path_unchanged():
    """The control: the word passes as it came when no repair claims it."""
    events = [event({"role": "assistant", "content": ""}), event({"content": "Sure."}), event({"content": " a"})]
    events.append(event({"content": WORD}))
    out, taken = delivered(events, TOOLS, True)
    assert taken == 2 and WORD.encode() in out  # " a" and the word


def hold(repairer: StreamRepairer, how: str) -> None:
    """Put choice 0 in a state where one repair holds text or changes plain text."""
    choice = repairer.choices[0]
    if how == "think_pending":
        choice.splitter().pending = "</thi"
    elif how == "scanner_pending":
        choice.scanner("content").pending = "<|tool"
    elif how == "scanner_edge_close":
        choice.scanner("reasoning_content").edge_close = "</think>"
    elif how == "scanner_moved":
        scanner = choice.scanner("content")
        scanner.route = "reasoning"
    elif how == "finished":
        choice.finished = True


@pytest.mark.parametrize("how", ["think_pending", "scanner_pending", "scanner_edge_close", "scanner_moved", "finished"])
def test_the_readiness_question_consults_every_text_repairs_state(how):
    repairer = primed(RequestFacts(0, {"read": {"type": "object"}}, True, True))
    assert repairer.choices[0].plain_readiness() is not None
    assert repairer.plain_read(event({"content": " plain"})) == 1
    hold(repairer, how)
    assert repairer.choices[0].plain_readiness() is None
    repairer.fast.refresh()
    assert repairer.plain_read(event({"content": " plain"})) == 0


def test_the_readiness_question_answers_per_text_kind():
    """Think tags: content may still be reasoning until the choice's content has begun; thinking
    off: reasoning is the answer and goes out as content; a renamed field: nothing passes."""
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    repairer.feed(event({"role": "assistant", "content": ""}))
    repairer.feed(event({"reasoning_content": "hm"}))
    readiness = repairer.choices[0].plain_readiness()
    assert readiness is not None and readiness.reasoning and not readiness.content
    off = StreamRepairer(RequestFacts(0, {}, True, True, thinking_off=True), POLICY)
    assert off.reasoning_to_content
    off.feed(event({"content": "a"}))
    off.feed(event({"content": "b"}))
    readiness = off.choices[0].plain_readiness()
    assert readiness is not None and readiness.content and not readiness.reasoning
    renaming = StreamRepairer(NO_TOOLS, Policy.build(Flavor.SELFHOSTED, reasoning_field="reasoning"))
    renaming.feed(event({"content": "a"}))
    assert renaming.choices[0].plain_readiness() is None


def test_thinking_off_reasoning_never_passes_the_fast_path_as_reasoning():
    """An empty reasoning delta goes out as it came and teaches the fast path its shape; the
    reasoning that follows is the answer and must still go out as content."""
    facts = RequestFacts(0, {}, True, True, thinking_off=True)
    events = [event({"role": "assistant", "content": ""}), event({"reasoning_content": ""})]
    events += [event({"content": "a"}), event({"content": "b"}), event({"reasoning_content": "answer"})]
    fast, _ = delivered(events, facts, True)
    full, _ = delivered(events, facts, False)
    assert fast == full and b'"content":"answer"' in fast
