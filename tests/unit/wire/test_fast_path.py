"""The per-read fast path (wire/response/fast_path.py) delivers exactly what the full path does."""

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.fast_path import PLAIN_ASCII, PLAIN_ONLY, TEXT_BODY, learn_template
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.retry.failure_kinds import TURN_CHECKS
from kimiwire.wire.retry.turn_gate import TurnGate
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.streams import Stream, tool_delta

POLICY = Policy.build(Flavor.SELFHOSTED)
NO_TOOLS = RequestFacts(0, {}, True, True)
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2-thinking"}


def event(delta: dict, finish: str | None = None, index: int = 0, **top) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**BASE, "choices": [choice], **top}) + b"\n\n"


def primed(facts: RequestFacts = NO_TOOLS, policy: Policy = POLICY) -> StreamRepairer:
    """A repairer whose stream has begun: a role chunk, then reasoning and content deltas that
    the full path forwarded unchanged (its templates; the first content delta ends the reasoning
    for the think-tag splitter, so the second is the one learned from)."""
    repairer = StreamRepairer(facts, policy)
    for chunk in (
        Stream().chunk({"role": "assistant", "content": ""}).body(),
        event({"reasoning_content": "hm"}),
        event({"content": "Sure."}),
        event({"content": " Here"}),
    ):
        assert repairer.feed(chunk) == [chunk]
    assert len(repairer.fast.templates) == 2
    return repairer


def test_plain_text_deltas_are_counted():
    repairer = primed()
    chunk = event({"content": "hello"}) + event({"reasoning_content": "think"}) + event({"content": 'é \\ " world'})
    assert repairer.plain_read(chunk) == 3
    assert repairer.data_events_in == 7
    assert repairer.feed(event({"content": "\n"})) == [event({"content": "\n"})]
    assert repairer.data_events_in == 8


def test_scalar_fields_after_choices_may_vary():
    repairer = primed()
    assert repairer.plain_read(event({"content": "a"}, None, sent_at=12345)) == 1
    assert repairer.plain_read(event({"content": "a"}, None, usage=None, system_fingerprint="fp_1", x=1.5e3)) == 1


@pytest.mark.parametrize(
    "chunk",
    [
        event({"content": "a <|tool_calls_section_begin|>"}),
        event({"content": "<think>"}),
        event({"content": "x <"}),
        event({"content": "tag \u003cthink"}),
        event({"content": "tag"}).replace(b"tag", b"\\u003Cthink"),
        event({"content": "X"}).replace(b'"X"', b'"\\ud83d"'),  # a lone surrogate
        event({"content": "a"}).replace(b'"a"', b'"\xff"'),  # invalid UTF-8: the full path notes it
        event({"content": "a"}).replace(b'"a"', b'"\x01"'),  # a raw control character
        event({"tool_calls": [tool_delta(0, "functions.read:0", "read", "")]}),
        event({"content": "a", "tool_calls": None}),
        event({"content": "a", "role": "assistant"}),
        event({}, "stop"),
        event({"content": "a"}, "stop"),
        event({}, None, usage={"prompt_tokens": 1}),
        event({"content": "a"}, None, usage={"prompt_tokens": 1}),
        event({"content": "a"}, None, error="x"),
        event({"content": "a"}, None, extra={"nested": 1}),
        event({"content": "a"}, None, index=1),
        event({"content": "a"})[:-1],  # the event is not complete yet
        event({"content": "a"}) + event({"content": "b"})[:-1],
        event({"content": "a"}).replace(b"\n\n", b"\r\n\r\n"),
        event({"content": "a"}) + b"\n",
        b": keepalive\n\n" + event({"content": "a"}),
        b"event: message\n" + event({"content": "a"}),
        b'data: {"error":{"message":"overloaded"}}\n\n',
        b"data: [DONE]\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}},{"delta":{"content":"b"}}]}\n\n',
    ],
)
def test_anything_the_full_path_may_act_on_goes_there(chunk):
    repairer = primed()
    assert repairer.plain_read(chunk) == 0
    assert repairer.data_events_in == 4


def test_a_template_is_learned_only_from_a_plain_text_shape():
    plain = event({"content": "a"})
    template = learn_template(plain, "content", False)
    assert template is not None and plain.startswith(template.head) and template.tail.endswith(b"]")
    assert learn_template(plain[:-1], "content", False) is None
    assert learn_template(plain.replace(b"\n\n", b"\r\n\r\n"), "content", False) is None
    assert learn_template(event({"content": "a"}, None, usage={"total_tokens": 1}), "content", False) is None
    assert learn_template(event({"reasoning_content": "a"}), "content", False) is None


TEXT = st.lists(
    st.sampled_from(
        [
            *("hello", " ", "", "<", "|", "<|tool_call", "s_section_begin|>", "<think>", "</think>", "é", "\n"),
            *('"', "\\", "read", " rea", "functions.", ":0", "{", "😀", "\u2028"),
            # Kimi K3 markup (wire/response/k3_markup.py), whole and in pieces
            *("<|open|>", "<|close|>", "response", "think", "<|sep|>", "<|close|>response<|sep|>"),
            *("<|open|>think<|sep|>", "<|close|>think<|sep|>", "<|op", "<|end_of_msg|>"),
            *('<|open|>tools<|sep|><|open|>call tool="read" index="1"<|sep|>', "<|close|>call<|sep|>"),
            *('<|open|>argument key="path" type="string"<|sep|>a<|close|>argument<|sep|>', "<|close|>tools<|sep|>"),
        ]
    ),
    max_size=4,
).map("".join)


def encoded(delta: dict, finish: str | None, index: int, top: dict, ascii_only: bool) -> bytes:
    """An event as different servers write it: orjson's compact UTF-8, or Python's json with
    \\u escapes; scalar fields after `choices` (a timestamp, `usage: null`)."""
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    body = {**BASE, "choices": [choice], **top}
    if ascii_only:
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
    return b"data: " + orjson.dumps(body) + b"\n\n"


TOP = st.sampled_from([{}, {}, {"sent_at": 17}, {"usage": None}, {"system_fingerprint": "fp"}])


def text_delta(key: str, text: str) -> dict:
    """`{key: text}`; `both`: the text under both reasoning names, as vLLM 0.13 writes it; `split`:
    a different text under each."""
    if key == "both":
        return {"reasoning": text, "reasoning_content": text}
    if key == "split":
        return {"reasoning": text + "a", "reasoning_content": text + "b"}
    return {key: text}


TEXT_KEY = st.sampled_from(["content", "reasoning_content", "reasoning", "content", "both", "split"])
TEXT_EVENT = st.builds(
    lambda key, text, nulls, index, top, ascii_only: encoded(
        {**nulls, **text_delta(key, text)}, None, index, top, ascii_only
    ),
    TEXT_KEY,
    TEXT,
    st.sampled_from([{}, {}, {"role": None}]),
    st.sampled_from([0, 0, 0, 1]),
    TOP,
    st.booleans(),
)
OTHER_EVENT = st.sampled_from(
    [
        event({"role": "assistant", "content": ""}),
        event({"content": "a", "tool_calls": None}),
        event({"tool_calls": [tool_delta(0, "functions.read:0", "read", "")]}),
        event({"tool_calls": [tool_delta(0, None, None, '{"path": "/a"}')]}),
        event({"tool_calls": [tool_delta(1, "functions.exec:1", "exec", '{"command"')]}),
        event({}, "stop"),
        event({}, "tool_calls"),
        event({}, "length"),
        event({}, None, usage={"prompt_tokens": 1, "completion_tokens": 2}),
        event({"content": "x"}, None, usage={"prompt_tokens": 1}),
        event({"content": "x"}, "stop"),
        b": keepalive\n\n",
        b'data: {"error":{"message":"overloaded"}}\n\n',
        b"data: not json\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"\xff"}}]}\n\n',
        b"data: [DONE]\n\n",
    ]
)
STREAMS = st.lists(st.one_of(TEXT_EVENT, TEXT_EVENT, TEXT_EVENT, OTHER_EVENT), max_size=30).map(b"".join)
TOOLS = RequestFacts(0, {"read": {"type": "object"}}, True, True)
K3 = RequestFacts(0, {"read": {"type": "object"}}, True, True, k3_model=True)
K3_NO_TOOLS = RequestFacts(0, {}, False, True, k3_model=True)
THINKING_OFF = RequestFacts(0, {}, True, True, thinking_off=True)  # reasoning deltas are the answer
FACTS = st.sampled_from(
    [NO_TOOLS, TOOLS, RequestFacts(0, {}, False, True, thinking_prefilled=True), K3, K3_NO_TOOLS, THINKING_OFF]
)


def run(
    body: bytes, cuts: list[int], fast: bool, facts: RequestFacts = NO_TOOLS, policy: Policy = POLICY
) -> tuple[list[bytes], list, tuple]:
    """`body` in reads cut at `cuts`: what each read delivered and the repairer's state after it
    (the tool section's too: the adapter's idle deadline reads it), the end, the log, the counters."""
    repairer = StreamRepairer(facts, policy)
    repairer.fast_path = fast
    per_read = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        out = repairer.feed(body[a:b])
        assert all(out), "never an empty chunk mid-stream"
        per_read.append(b"".join(out))
        state = (repairer.all_finished, repairer.done, repairer.buffered, repairer.turn, repairer.tool_section_open)
        per_read.append(repr(state).encode())
    per_read.append(b"".join(repairer.end()))
    kinds = [(r.kind, r.message_index, r.before, r.after) for r in repairer.log.entries]
    return per_read, kinds, (repairer.events_in, repairer.data_events_in)


@settings(max_examples=400, deadline=None)
@given(STREAMS, FACTS, st.data())
def test_fast_and_full_paths_deliver_identical_bytes(body, facts, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=12))))
    assert run(body, cuts, True, facts) == run(body, cuts, False, facts)


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT_EVENT, min_size=1, max_size=20), FACTS, st.data())
def test_a_text_stream_split_at_event_boundaries_matches_the_full_path(events, facts, data):
    """Reads that end on event boundaries are the ones the fast path takes: cut only there."""
    boundaries = [sum(len(e) for e in events[:i]) for i in range(1, len(events))]
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), max_size=10)))) if boundaries else []
    body = event({"role": "assistant", "content": ""}) + b"".join(events) + event({}, "stop") + b"data: [DONE]\n\n"
    shift = len(event({"role": "assistant", "content": ""}))
    cuts = [shift] + [c + shift for c in cuts]
    assert run(body, cuts, True, facts) == run(body, cuts, False, facts)


def test_the_fast_path_is_taken_for_plain_text():
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    first = Stream().chunk({"role": "assistant", "content": ""}).body()
    began = event({"content": "Sure."})
    text = event({"content": "hello"}) + event({"content": " world"})
    assert repairer.feed(first) == [first]
    # Until the choice's content has begun, a delta may still be reasoning (think tags), and
    # the first plain delta of a shape is what the full path learns from.
    assert repairer.plain_read(began) == 0
    assert repairer.feed(began) == [began]
    assert repairer.plain_read(text) == 2
    assert repairer.data_events_in == 4


def test_the_fast_path_waits_for_content_when_reasoning_may_come_as_content():
    prefilled = RequestFacts(0, {}, False, True, thinking_prefilled=True)
    repairer = StreamRepairer(prefilled, POLICY)
    first = Stream().chunk({"role": "assistant", "content": ""}).body()
    reasoning = event({"content": "Let me think."})
    assert repairer.feed(first) == [first]
    assert repairer.plain_read(reasoning) == 0
    assert b"reasoning_content" in b"".join(repairer.feed(reasoning))


def test_with_declared_tools_the_markup_scanner_sees_each_text():
    """A text tail like ' rea' may be the head of a call to `read`: the scanner holds it, so the
    read goes to the full path; other text passes."""
    facts = RequestFacts(0, {"read": {"type": "object"}}, True, True)
    repairer = primed(facts)
    assert repairer.plain_read(event({"content": "hello "})) == 1
    assert repairer.plain_read(event({"content": "now rea"})) == 0
    assert repairer.plain_read(event({"content": "x functions."})) == 0


def test_a_renamed_reasoning_field_never_takes_the_fast_path():
    """Every delta's reasoning field is renamed: no plain text passes as it came."""
    renaming = StreamRepairer(NO_TOOLS, Policy.build(Flavor.SELFHOSTED, reasoning_field="reasoning"))
    for chunk in (Stream().chunk({"role": "assistant", "content": ""}).body(), event({"content": "Sure."})):
        renaming.feed(chunk)
    assert renaming.feed(event({"content": " Here"})) == [event({"content": " Here"})]
    assert renaming.fast.templates and not renaming.fast.ready
    assert renaming.plain_read(event({"content": " more"})) == 0


NAME_TEXT = st.lists(
    st.sampled_from(["read", " rea", "re", "functions.", " functions.re", ":0", " ", "x", "ad:1 ", "}", ">"]),
    max_size=3,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(NAME_TEXT, min_size=1, max_size=12), st.data())
def test_with_declared_tools_a_name_at_a_text_end_is_held_on_both_paths(texts, data):
    """Text that may become the head `read:0` of a call whose begin markers were consumed is held
    by the markup scanner: the fast path must not let it out either."""
    events = [event({"content": text}) for text in ["a", "b", *texts]]
    events.append(event({"content": "d:0<|tool_call_argument_begin|>{}<|tool_call_end|>"}))
    body = event({"role": "assistant", "content": ""}) + b"".join(events) + event({}, "stop") + b"data: [DONE]\n\n"
    first = len(event({"role": "assistant", "content": ""}))
    boundaries = [first + sum(len(e) for e in events[:i]) for i in range(len(events))]
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), min_size=1, max_size=12))))
    assert run(body, cuts, True, TOOLS) == run(body, cuts, False, TOOLS)


GATE_TEXT = st.sampled_from(["", " ", "\n", "\u3000", "think", "é", "<", "done"])
GATE_EVENT = st.builds(
    lambda key, text, nulls, top: encoded({**nulls, **text_delta(key, text)}, None, 0, top, False),
    st.sampled_from(["content", "reasoning_content", "reasoning_content", "reasoning", "both", "both", "split"]),
    GATE_TEXT,
    st.sampled_from([{}, {}, {"role": None}]),
    TOP,
)
GATE_STREAMS = st.lists(st.one_of(*[GATE_EVENT] * 8, OTHER_EVENT), max_size=25)
FIRST = st.sampled_from([[event({"role": "assistant", "content": ""})], [event({"content": ""})], []])


NO_SPLIT = Policy.build(Flavor.SELFHOSTED, think_tags="keep")


def gated(events: list[bytes], fast: bool, policy: Policy = POLICY) -> tuple:
    repairer = StreamRepairer(NO_TOOLS, policy)
    repairer.fast_path = fast
    gate = TurnGate(NO_TOOLS, frozenset(TURN_CHECKS), True)
    stream = RepairingStream(repairer, gate=gate)
    out = [b"".join(stream(piece)) for piece in events]
    out.append(b"".join(stream(b"")))
    return out, gate.seen, gate.proven, gate.role_delivered, gate.verdict(), stream.failed_turn


@settings(max_examples=400, deadline=None)
@given(FIRST, GATE_STREAMS, st.sampled_from([POLICY, NO_SPLIT]))
def test_the_turn_gate_judges_fast_reads_as_it_judges_parsed_ones(first, events, policy):
    """A turn not yet proven (reasoning first, whitespace content) is judged by the retry gate:
    reads the fast path takes reach the same verdict, records and bytes as parsed ones."""
    events = [*first, *events]
    assert gated(events, True, policy) == gated(events, False, policy)


def test_the_gate_is_fed_without_parsing_once_the_fast_path_knows_the_shape(monkeypatch):
    events = [event({"role": "assistant", "content": ""})] + [event({"reasoning_content": "hm"})] * 5
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    gate = TurnGate(NO_TOOLS, frozenset(TURN_CHECKS), True)
    stream = RepairingStream(repairer, gate=gate)
    for piece in events[:3]:
        stream(piece)
    with monkeypatch.context() as patched:
        patched.setattr(gate, "feed", lambda events: pytest.fail("parsed again"))
        for piece in events[3:]:
            assert stream(piece) == [piece]
    assert gate.seen.reasoning_chars == 10 and not gate.proven
    # The first content delta goes the full path (think tags: it ends the reasoning), and proves the turn.
    assert stream(event({"content": "Answer"})) == [event({"content": "Answer"})]
    assert gate.proven


def streamed(body: bytes, cuts: list[int], fast: bool, facts: RequestFacts, policy: Policy = POLICY) -> tuple:
    """The whole callable (its steady lane included) on `body` cut at `cuts`."""
    repairer = StreamRepairer(facts, policy)
    repairer.fast_path = fast
    stream = RepairingStream(repairer, clock=lambda: 0.0)
    out = [b"".join(stream(body[a:b])) for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out.append(b"".join(stream(b"")))
    kinds = [(r.kind, r.message_index, r.before, r.after) for r in repairer.log.entries]
    counters = (repairer.events_in, repairer.data_events_in, repairer.turn, stream.calls if not fast else None)
    return out, kinds, counters[:3], bytes(stream.upstream), bytes(stream.delivered), stream.times


CONTENT_ONLY = st.lists(TEXT_EVENT.filter(lambda e: b'"content"' in e), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(TEXT_EVENT, min_size=1, max_size=20), CONTENT_ONLY), FACTS, st.data())
def test_the_callables_steady_lane_delivers_what_the_full_path_does(events, facts, data):
    """Cut at event boundaries (where the lane works) and anywhere (where it must step aside)."""
    first = event({"role": "assistant", "content": ""})
    body = first + b"".join(events) + event({}, "stop") + b"data: [DONE]\n\n"
    boundaries = [len(first) + sum(len(e) for e in events[:i]) for i in range(len(events) + 1)]
    anywhere = st.lists(st.integers(1, len(body) - 1), max_size=6)
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), max_size=12)) + data.draw(anywhere)))
    assert streamed(body, cuts, True, facts) == streamed(body, cuts, False, facts)


@given(st.binary(max_size=40))
def test_plain_only_tells_the_texts_made_of_plain_ascii_bytes(text):
    """`text.translate(PLAIN_ONLY) is text` exactly when every byte is one of PLAIN_ASCII, and
    such a text is a whole JSON string body by itself (TEXT_BODY reads it to its closing quote)."""
    plain = all(byte in PLAIN_ASCII for byte in text)
    assert (text.translate(PLAIN_ONLY) is text) == plain
    if plain:
        assert TEXT_BODY.match(text + b'"').end() == len(text) + 1


def test_plain_only_keeps_exactly_the_plain_ascii_bytes():
    for byte in range(256):
        doubled = bytes([byte, byte])
        assert (doubled.translate(PLAIN_ONLY) is doubled) == (byte in PLAIN_ASCII)


def test_the_steady_lane_passes_plain_events_without_the_repairer(monkeypatch):
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    stream = RepairingStream(repairer)
    seen = [event({"role": "assistant", "content": ""}), event({"content": "Sure."}), event({"content": "x"})]
    for piece in seen:
        assert stream(piece) == [piece]
    assert stream._lane is not None
    monkeypatch.setattr(repairer, "plain_read", lambda data: pytest.fail("not the lane"))
    monkeypatch.setattr(stream, "_plain_read", lambda data: pytest.fail("not the lane"))
    plain = [event({"content": f" word {n}"}) for n in range(5)]
    assert [stream(piece) for piece in plain] == [[piece] for piece in plain]
    assert repairer.data_events_in == 2  # the lane counts and files its reads in bulk ("x" on)
    stream.settle()
    assert repairer.data_events_in == repairer.events_in == 8
    assert stream.upstream_bytes() == stream.delivered_bytes() == b"".join([*seen, *plain])
    for odd in (event({"content": "a<b"}), event({"content": "caf\u00e9"}), event({"content": 'say \\"hi\\"'})):
        with pytest.raises(pytest.fail.Exception):
            stream(odd)  # anything but plain ASCII text leaves the lane


@settings(max_examples=200, deadline=None)
@given(st.lists(NAME_TEXT, min_size=1, max_size=12), st.data())
def test_with_declared_tools_the_steady_lane_holds_what_the_scanner_holds(texts, data):
    events = [event({"content": text}) for text in ["a", "b", *texts]]
    events.append(event({"content": "d:0<|tool_call_argument_begin|>{}<|tool_call_end|>"}))
    body = event({"role": "assistant", "content": ""}) + b"".join(events) + event({}, "stop") + b"data: [DONE]\n\n"
    first = len(event({"role": "assistant", "content": ""}))
    boundaries = [first + sum(len(e) for e in events[:i]) for i in range(len(events) + 1)]
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), min_size=1, max_size=14))))
    assert streamed(body, cuts, True, TOOLS) == streamed(body, cuts, False, TOOLS)


@pytest.mark.parametrize("policy", [POLICY, NO_SPLIT], ids=["split_think", "keep_think"])
def test_the_steady_lane_opens_only_once_its_text_kind_was_seen(policy):
    """A template learned from an empty text: the first real text must still set the turn's flags."""
    events = [event({"role": "assistant", "content": ""}), *[event({"content": ""})] * 3, event({"content": "hi"})]
    events += [event({"content": "more"}), event({}, "stop"), b"data: [DONE]\n\n"]
    body = b"".join(events)
    cuts = [sum(len(e) for e in events[:i]) for i in range(1, len(events))]
    fast = streamed(body, cuts, True, NO_TOOLS, policy)
    assert fast == streamed(body, cuts, False, NO_TOOLS, policy)
    assert fast[2][2].content
