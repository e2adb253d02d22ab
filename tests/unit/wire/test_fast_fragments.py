"""The fast path for tool-call argument fragments (wire/response/fast_fragments.py): streams of
calls whose arguments come in fragments, written in random server layouts, deliver through it
exactly what the full path delivers (bytes per read, logs, counters, turn, buffered bytes, the
adapter's times, the retry gate's verdict), and it is taken."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.fast_fragments import (
    ARGS_ONLY,
    ARGS_PLAIN,
    ARGUMENTS_BODY,
    MAX_FRAGMENT_TEMPLATES,
    FragmentPath,
    learn_fragment_template,
)
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.unit.wire.test_fast_path import FACTS, NO_SPLIT, NO_TOOLS, POLICY, TEXT, gated, run
from tests.unit.wire.test_fast_path_layouts import LAYOUTS, Layout

SMALL_BUFFER = Policy.build(Flavor.SELFHOSTED, stream_buffer_limit=40)  # the limit falls mid-call
PASSTHROUGH = Policy.build(Flavor.SELFHOSTED, tool_stream="passthrough")
POLICIES = st.sampled_from([POLICY, POLICY, NO_SPLIT, SMALL_BUFFER, PASSTHROUGH])
NAMES = ("read", "exec", "write")
TOOLS_OF_THREE = RequestFacts(0, {name: {"type": "object"} for name in NAMES}, True, True)

# Pieces of arguments as models write them: JSON punctuation, escapes, markup, non-ASCII, a value
# closed early (a duplicate or garbage after it), a fragment that is empty.
PIECE = st.sampled_from(
    [
        *('{"', "path", '": "', "/srv/", "x" * 3, '"}', "}", "]", "[1, 2", '\\"', "\\n", "\\", "é", "😀"),
        *("<", "<|tool_call_end|>", "\u003c", "", " ", '{"a": 1}', "null", '"', "\u2028", "\t"),
    ]
)


class CallStream:
    """Events of calls in one layout, the fragment's own fields chosen per stream (SGLang writes
    `id: null`, `type` and `name: null` in each; vLLM only `index` and `arguments`)."""

    def __init__(self, layout: Layout, fragment_fields: dict[str, Any]) -> None:
        self.layout = layout
        self.fragment_fields = fragment_fields

    def head(self, index: int, arguments: str | None) -> bytes:
        function: dict[str, Any] = {"name": NAMES[index % 3]}
        if arguments is not None:
            function["arguments"] = arguments
        call = {"id": f"functions.{NAMES[index % 3]}:{index}", "type": "function", "index": index, "function": function}
        return self.layout.event({"tool_calls": [call]})

    def fragment(self, index: int, arguments: str, **top: Any) -> bytes:
        fields = dict(self.fragment_fields)
        function = {"name": None, "arguments": arguments} if fields.pop("name", False) else {"arguments": arguments}
        return self.layout.event({"tool_calls": [{**fields, "index": index, "function": function}]}, **top)


VALUE = st.text(st.sampled_from('ab /<>"\\\n\té😀\u2028{}[]'), max_size=12)
ARGUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(["path", "command", "content"]), VALUE, max_size=3).map(json.dumps),
    st.lists(VALUE, max_size=3).map(lambda items: json.dumps({"items": items}, ensure_ascii=False)),
)


@st.composite
def argument_pieces(draw: st.DrawFn) -> list[str]:
    """A call's arguments in fragments: a JSON object split anywhere (sometimes cut off, sometimes
    with more after it), or random pieces."""
    if draw(st.booleans()):
        return draw(st.lists(PIECE, min_size=1, max_size=18))
    text = draw(ARGUMENTS)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    else:
        text += draw(st.sampled_from(["", "", "}"]))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=40))
    pieces, position = [], 0
    for size in sizes:
        pieces.append(text[position : position + size])
        position += size
    return [*pieces, text[position:]] if position < len(text) else pieces


FRAGMENT_FIELDS = st.sampled_from([{}, {"id": None, "type": "function", "name": True}, {"type": "function"}])


@st.composite
def call_streams(draw: st.DrawFn, layout: Layout, max_calls: int = 3) -> list[bytes]:
    """A role event, text, then calls (their fragments sometimes interleaved with another call's,
    with text, keepalives, a fragment of an index never started or a late one), then an ending."""
    calls = CallStream(layout, draw(FRAGMENT_FIELDS))
    events = [layout.event({"role": "assistant", "content": ""})]
    events += [layout.event({key: text}) for key, text in draw(st.lists(st.tuples(TEXT_KEYS, TEXT), max_size=4))]
    started: list[int] = []
    for index in range(draw(st.integers(1, max_calls))):
        events.append(calls.head(index, draw(st.sampled_from([None, "", '{"']))))
        started.append(index)
        for piece in draw(argument_pieces()):
            other = draw(st.sampled_from(["", "", "", "", "", "", "interleave", "text", "keepalive", "unknown"]))
            if other == "interleave":
                events.append(calls.fragment(draw(st.sampled_from(started)), piece))
            elif other == "text":
                events.append(layout.event({"content": draw(TEXT)}))
            elif other == "keepalive":
                events.append(b": keepalive\n\n")
            elif other == "unknown":
                events.append(calls.fragment(7, piece))
            events.append(calls.fragment(index, piece, **draw(TOP)))
    ending = draw(st.sampled_from(["tool_calls", "length", "stop", None, "late"]))
    if ending == "late":
        events += [layout.event({}, "tool_calls"), calls.fragment(0, "}")]
    elif ending is not None:
        events.append(layout.event({}, ending))
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    return events


TEXT_KEYS = st.sampled_from(["content", "reasoning_content", "reasoning"])
TOP = st.sampled_from([{}, {}, {}, {"sent_at": 17}, {"sent_at": 18}])  # a field after `choices` that varies


def cut(events: list[bytes], data: st.DataObject, anywhere: bool = True) -> tuple[bytes, list[int]]:
    """The body and reads cut at event boundaries (where the fast paths work), some anywhere."""
    body = b"".join(events)
    boundaries = [sum(len(e) for e in events[:i]) for i in range(1, len(events))]
    if data.draw(st.booleans()):  # one event a read, as servers send them
        cuts = set(boundaries)
    else:
        cuts = set(data.draw(st.lists(st.sampled_from(boundaries), max_size=len(boundaries)))) if boundaries else set()
    if anywhere and len(body) > 1:
        cuts |= set(data.draw(st.lists(st.integers(1, len(body) - 1), max_size=3)))
    return body, sorted(cuts)


@settings(max_examples=400, deadline=None)
@given(LAYOUTS, FACTS, POLICIES, st.data())
def test_call_streams_in_any_layout_deliver_identical_bytes_on_both_paths(layout, facts, policy, data):
    body, cuts = cut(data.draw(call_streams(layout)), data)
    assert run(body, cuts, True, facts, policy) == run(body, cuts, False, facts, policy)


@settings(max_examples=300, deadline=None)
@given(LAYOUTS, FACTS, POLICIES, st.data())
def test_call_streams_through_the_callable_match_the_full_path(layout, facts, policy, data):
    """The adapter's steady branch takes fragments too: the bytes, logs, counters and the times
    it keeps (the tool section's state among them) are the full path's."""
    body, cuts = cut(data.draw(call_streams(layout)), data, anywhere=data.draw(st.booleans()))
    assert streamed_reads(body, cuts, True, facts, policy) == streamed_reads(body, cuts, False, facts, policy)


def streamed_reads(body: bytes, cuts: list[int], fast: bool, facts: RequestFacts, policy: Policy) -> tuple:
    """`streamed` (test_fast_path.py), with the adapter's times after every read (the watchdog
    reads them between reads: the tool section's state picks the idle deadline)."""
    repairer = StreamRepairer(facts, policy)
    repairer.fast_path = fast
    stream = RepairingStream(repairer, clock=lambda: 0.0)
    reads = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        reads.append((b"".join(stream(body[a:b])), repr(stream.times)))
    reads.append((b"".join(stream(b"")), repr(stream.times)))
    kinds = [(r.kind, r.message_index, r.before, r.after) for r in repairer.log.entries]
    counters = (repairer.events_in, repairer.data_events_in, repairer.turn)
    return reads, kinds, counters, bytes(stream.upstream), bytes(stream.delivered)


@settings(max_examples=200, deadline=None)
@given(LAYOUTS, st.sampled_from([POLICY, NO_SPLIT]), st.data())
def test_call_streams_give_the_turn_gate_the_same_verdict_on_both_paths(layout, policy, data):
    """A turn the gate still judges (calls before any content) reaches the same verdict, records
    and bytes whether its fragments took the fast path or not."""
    events = data.draw(call_streams(layout, max_calls=2))
    assert gated(events, True, policy) == gated(events, False, policy)


def test_a_fragment_whose_accounting_the_fast_path_dropped_shows(monkeypatch):
    """What these properties compare does differ when the fast path drops a fragment's
    accounting: the comparisons above can fail."""
    layout = Layout((",", ":"), False, 0)
    calls = CallStream(layout, {})
    events = [layout.event({"role": "assistant", "content": ""}), layout.event({"content": "ok"})]
    events += [calls.head(0, ""), *[calls.fragment(0, piece) for piece in ('{"pa', 'th": ', '"/a"', "}")]]
    events += [layout.event({}, "tool_calls"), b"data: [DONE]\n\n"]
    body = b"".join(events)
    cuts = [sum(len(e) for e in events[:i]) for i in range(1, len(events))]
    full = run(body, cuts, False, NO_TOOLS, POLICY)
    assert run(body, cuts, True, NO_TOOLS, POLICY) == full
    assert b'"arguments":"{\\"path\\": \\"/a\\"}"' in b"".join(full[0])
    take = FragmentPath._take

    def dropping(self: FragmentPath, taken: list) -> list[bytes] | None:
        assembly = self.assembly
        assembly.add_fragment = lambda call, text: None  # type: ignore[union-attr,method-assign]
        try:
            return take(self, taken)
        finally:
            del assembly.add_fragment  # type: ignore[union-attr]

    monkeypatch.setattr(FragmentPath, "_take", dropping)
    assert run(body, cuts, True, NO_TOOLS, POLICY)[0] != full[0]


def fragment_reads(facts: RequestFacts, events: list[bytes]) -> tuple[StreamRepairer, list[bytes], int]:
    """`events` one read each through a repairer, its fragment path asked first: the repairer, what
    each read delivered, and how many reads the fragment path took."""
    fast = StreamRepairer(facts, POLICY)
    out, taken = [], 0
    for raw in events:
        held = fast.fragment_read(raw)
        taken += held is not None
        out.append(b"".join(fast.feed(raw) if held is None else held))
    return fast, out, taken


def test_fragments_are_learned_and_taken_in_every_layout_of_the_corpus():
    """Of each bench layout's agent turn, the argument fragments after a call's first take the
    fast path (SGLang writes `role: null` beside them: the full path sends the event again
    without its call, the fast path the same bytes)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "scripts"))
    import bench_layouts

    for row in (*bench_layouts.LAYOUTS, bench_layouts.AGENT_TURN):
        ex = bench_layouts.exemplars(row)
        events = [ex.encode(ex.role), ex.text(ex.content, "Sure.")]
        events += ex.call(0, "read", ['{"pa', 'th": ', '"/a/b', "/c/d", '"}'])
        events += ex.call(1, "exec", ['{"co', "mmand", '": "l', 's"}'])
        events += [ex.encode(ex.calls_finish), b"data: [DONE]\n\n"]
        for facts in (NO_TOOLS, bench_layouts.TOOLS):
            _, out, taken = fragment_reads(facts, events)
            full = StreamRepairer(facts, POLICY)
            full.fast_path = False
            assert out == [b"".join(full.feed(raw)) for raw in events], row
            assert taken == 7, (row, taken)  # of 9: each call's first fragment is learned from


def test_a_fragment_template_is_learned_only_from_a_fragment_shape():
    layout = Layout((", ", ": "), True, 2, ("matched_stop",), ("role", "content"), {"usage": None})
    raw = CallStream(layout, {"id": None, "type": "function", "name": True}).fragment(1, '{"a"')
    template = learn_fragment_template(raw, 1)
    assert template is not None and raw.startswith(template.head) and raw.endswith(template.end)
    assert template.tail.rstrip().endswith(b"]") and template.call_index == 1
    assert learn_fragment_template(raw[:-1], 1) is None
    assert learn_fragment_template(layout.event({"content": "a"}), 0) is None
    assert learn_fragment_template(raw.replace(b"\n\n", b"\r\n\r\n"), 1) is None


@pytest.mark.parametrize(
    "odd",
    [
        b"/a\\ud83d",  # a lone surrogate: orjson refuses the event
        b"\x01",  # a raw control character
        b"\xff",  # invalid UTF-8
    ],
)
def test_arguments_the_full_path_must_judge_are_not_taken(odd):
    layout = Layout((",", ":"), False, 0)
    calls = CallStream(layout, {})
    repairer = StreamRepairer(NO_TOOLS, POLICY)
    for raw in (layout.event({"role": "assistant", "content": ""}), calls.head(0, ""), calls.fragment(0, "{")):
        repairer.feed(raw)
    assert repairer.fragment_read(calls.fragment(0, '"a<\\u003c')) == []
    assert repairer.fragment_read(calls.fragment(0, "X").replace(b'"X"', b'"' + odd + b'"')) is None
    assert repairer.fragment_read(calls.fragment(1, "a")) is None  # a call not started


@given(st.binary(max_size=40))
def test_args_only_tells_the_texts_made_of_plain_ascii_bytes(text):
    plain = all(byte in ARGS_PLAIN for byte in text)
    assert (text.translate(ARGS_ONLY) is text) == plain
    if plain:
        match = ARGUMENTS_BODY.match(text + b'"')
        assert match is not None and match.end() == len(text) + 1


def test_many_interleaved_calls_are_taken_and_learning_stays_bounded():
    """Calls whose fragments interleave, more of them than templates are kept: the first
    MAX_FRAGMENT_TEMPLATES calls' fragments are taken after their first (no call evicts another's
    template on each event, which cost a learn per fragment), the rest go the full path, and the
    bytes are the full path's."""
    layout = Layout((",", ":"), False, 0, (), ("role",), {})
    calls = CallStream(layout, {"id": None, "type": "function", "name": True})
    count = MAX_FRAGMENT_TEMPLATES + 4
    events = [layout.event({"role": "assistant", "content": ""})]
    events += [calls.head(index, "") for index in range(count)]
    rounds = 5
    events += [calls.fragment(index, "xyz") for _ in range(rounds) for index in range(count)]
    events += [layout.event({}, "tool_calls"), b"data: [DONE]\n\n"]
    fast, out, taken = fragment_reads(TOOLS_OF_THREE, events)
    out.append(b"".join(fast.end()))
    full = StreamRepairer(TOOLS_OF_THREE, POLICY)
    full.fast_path = False
    assert out == [*(b"".join(full.feed(raw)) for raw in events), b"".join(full.end())]
    assert taken == MAX_FRAGMENT_TEMPLATES * (rounds - 1)
    assert len(fast.fragments.templates) == MAX_FRAGMENT_TEMPLATES
