"""The per-read fast path (wire/response/fast_path.py) delivers exactly what the full path does."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.policy import Flavor, Policy
from kimiwire.wire.response.fast_path import chunk_needs_repair, plain_events
from kimiwire.wire.response.stream_repair import StreamRepairer

from tests.support.streams import Stream, tool_delta

POLICY = Policy.build(Flavor.SELFHOSTED)
NO_TOOLS = RequestFacts(0, {}, True, True)
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2-thinking"}


def event(delta: dict, finish: str | None = None, index: int = 0, **top) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**BASE, "choices": [choice], **top}) + b"\n\n"


def test_plain_text_deltas_are_counted():
    chunk = event({"content": "hello"}) + event({"reasoning_content": "think"}) + event({"content": "é world"})
    assert plain_events(chunk) == 3
    assert not chunk_needs_repair(chunk)


@pytest.mark.parametrize(
    "chunk",
    [
        event({"content": "a <|tool_calls_section_begin|>"}),
        event({"content": "<think>"}),
        event({"content": "x <"}),
        event({"content": "tag \\u003cthink"}),
        event({"tool_calls": [tool_delta(0, "functions.read:0", "read", "")]}),
        event({}, "stop"),
        event({}, None, usage={"prompt_tokens": 1}),
        event({"content": "a"}, None, index=1),
        event({"content": "a"})[:-1],  # the event is not complete yet
        event({"content": "a"}).replace(b"\n\n", b"\r\n\r\n"),
        b": keepalive\n\n" + event({"content": "a"}),
        b"event: message\n" + event({"content": "a"}),
        b'data: {"error":{"message":"overloaded"}}\n\n',
        b"data: [DONE]\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}},{"delta":{"content":"b"}}]}\n\n',
    ],
)
def test_anything_the_full_path_may_act_on_goes_there(chunk):
    assert plain_events(chunk) == 0


TEXT = st.lists(
    st.sampled_from(["hello", " ", "", "<", "|", "<|tool_call", "s_section_begin|>", "<think>", "</think>", "é", "\n"]),
    max_size=4,
).map("".join)
TEXT_EVENT = st.builds(
    lambda key, text, index: event({key: text}, None, index),
    st.sampled_from(["content", "reasoning_content", "reasoning"]),
    TEXT,
    st.sampled_from([0, 0, 0, 1]),
)
OTHER_EVENT = st.sampled_from(
    [
        event({"role": "assistant", "content": ""}),
        event({"tool_calls": [tool_delta(0, "functions.read:0", "read", "")]}),
        event({"tool_calls": [tool_delta(0, None, None, '{"path": "/a"}')]}),
        event({"tool_calls": [tool_delta(1, "functions.exec:1", "exec", '{"command"')]}),
        event({}, "stop"),
        event({}, "tool_calls"),
        event({}, "length"),
        event({}, None, usage={"prompt_tokens": 1, "completion_tokens": 2}),
        event({"content": "x"}, "stop"),
        b": keepalive\n\n",
        b'data: {"error":{"message":"overloaded"}}\n\n',
        b"data: not json\n\n",
        b"data: [DONE]\n\n",
    ]
)
STREAMS = st.lists(st.one_of(TEXT_EVENT, TEXT_EVENT, TEXT_EVENT, OTHER_EVENT), max_size=30).map(b"".join)


def run(body: bytes, cuts: list[int], fast: bool) -> tuple[list[bytes], list, tuple]:
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    repairer.fast_path = fast
    per_read = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        out = repairer.feed(body[a:b])
        assert all(out), "never an empty chunk mid-stream"
        per_read.append(b"".join(out))
        per_read.append(repr((repairer.all_finished, repairer.done, repairer.buffered, repairer.turn)).encode())
    per_read.append(b"".join(repairer.end()))
    kinds = [(r.kind, r.message_index, r.before, r.after) for r in repairer.log.entries]
    return per_read, kinds, (repairer.events_in, repairer.data_events_in)


@settings(max_examples=300, deadline=None)
@given(STREAMS, st.data())
def test_fast_and_full_paths_deliver_identical_bytes(body, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=12))))
    assert run(body, cuts, fast=True) == run(body, cuts, fast=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT_EVENT, min_size=1, max_size=20), st.data())
def test_a_text_stream_split_at_event_boundaries_matches_the_full_path(events, data):
    """Reads that end on event boundaries are the ones the fast path takes: cut only there."""
    boundaries = [sum(len(e) for e in events[:i]) for i in range(1, len(events))]
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), max_size=10)))) if boundaries else []
    body = event({"role": "assistant", "content": ""}) + b"".join(events) + event({}, "stop") + b"data: [DONE]\n\n"
    shift = len(event({"role": "assistant", "content": ""}))
    cuts = [shift] + [c + shift for c in cuts]
    assert run(body, cuts, fast=True) == run(body, cuts, fast=False)


def test_the_fast_path_is_taken_for_plain_text():
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    first = Stream().chunk({"role": "assistant", "content": ""}).body()
    began = event({"content": "Sure."})
    text = event({"content": "hello"}) + event({"content": " world"})
    assert repairer.feed(first) == [first]
    # Until the choice's content has begun, a delta may still be reasoning (think tags): full path.
    assert not repairer._passes_whole(began)
    assert repairer.feed(began) == [began]
    assert repairer._passes_whole(text)
    assert repairer.data_events_in == 4


def test_the_fast_path_waits_for_content_when_reasoning_may_come_as_content():
    prefilled = RequestFacts(0, {}, False, True, thinking_prefilled=True)
    repairer = StreamRepairer(prefilled, POLICY)
    first = Stream().chunk({"role": "assistant", "content": ""}).body()
    reasoning = event({"content": "Let me think."})
    assert repairer.feed(first) == [first]
    assert not repairer._passes_whole(reasoning)
    assert b"reasoning_content" in b"".join(repairer.feed(reasoning))


def test_the_fast_path_is_off_when_markup_may_name_a_declared_tool():
    """A text tail like ' rea' may be the head of a call to `read`: the scanner must see it."""
    facts = RequestFacts(0, {"read": {"type": "object"}}, True, True)
    assert not StreamRepairer(facts, POLICY).fast_path
    assert not StreamRepairer(NO_TOOLS, Policy.build(Flavor.SELFHOSTED, reasoning_field="reasoning")).fast_path
