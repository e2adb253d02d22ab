"""The fast path on any server's layout: the properties of test_fast_path.py on streams written with
a random layout (spacing, field order, extra null fields, \\u escapes), one per stream as a server
writes them; and how many of the engine corpus's text events each engine's layout sends there."""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.fast_path import learn_template
from kimiwire.wire.response.reasoning_field import TEXT_KEYS
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support import engine_corpus
from tests.support.streams import tool_delta
from tests.unit.wire.test_fast_path import (
    BASE,
    FACTS,
    NO_SPLIT,
    POLICY,
    TEXT,
    TEXT_KEY,
    gated,
    run,
    streamed,
    text_delta,
)


@dataclass(frozen=True)
class Layout:
    """How one server writes its events: separators (None: orjson-like compact UTF-8), \\u escapes
    or UTF-8, a key order (0: the OpenAI order; else a seeded shuffle of every object's keys), and
    null fields it adds to the choice, the delta and the chunk."""

    separators: tuple[str, str]
    ascii_only: bool
    order: int
    choice_nulls: tuple[str, ...] = ()
    delta_nulls: tuple[str, ...] = ()
    top: dict[str, Any] = field(default_factory=dict)

    def _ordered(self, obj: dict[str, Any]) -> dict[str, Any]:
        if not self.order:
            return obj
        rank = {key: hashlib.blake2b(f"{self.order}:{key}".encode(), digest_size=4).digest() for key in obj}
        return {key: obj[key] for key in sorted(obj, key=rank.__getitem__)}

    def event(self, delta: dict[str, Any], finish: str | None = None, index: int = 0, **top: Any) -> bytes:
        delta = self._ordered({**{name: None for name in self.delta_nulls if name not in delta}, **delta})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        choice = self._ordered({**choice, **{name: None for name in self.choice_nulls}})
        body = self._ordered({**BASE, "choices": [choice], **self.top, **top})
        text = json.dumps(body, separators=self.separators, ensure_ascii=self.ascii_only)
        return b"data: " + text.encode() + b"\n\n"


LAYOUTS = st.builds(
    Layout,
    st.sampled_from([(",", ":"), (", ", ": "), (",", ": "), (" ,", " : ")]),
    st.booleans(),
    st.sampled_from([0, 0, 1, 2, 3]),
    st.sampled_from([(), ("stop_reason",), ("matched_stop",), ("stop_reason", "token_ids"), ("kv_transfer_params",)]),
    # `tool_calls: null`: SGLang 0.5.5 writes it in every delta
    st.sampled_from([(), ("reasoning_content",), ("role",), ("role", "reasoning_content"), ("tool_calls",)]),
    st.sampled_from([{}, {"usage": None}, {"system_fingerprint": None}]),
)


@st.composite
def stream_events(draw: st.DrawFn, layout: Layout, others: bool = True, max_size: int = 25) -> list[bytes]:
    """Text deltas (and, with `others`, every other kind of event) in `layout`."""
    text_event = st.builds(
        lambda key, text, top: layout.event(text_delta(key, text), None, 0, **top),
        TEXT_KEY,
        TEXT,
        st.sampled_from([{}, {}, {"sent_at": 17}]),
    )
    other = st.sampled_from(
        [
            layout.event({"role": "assistant", "content": ""}),
            layout.event({"content": "a"}, None, 1),
            layout.event({"tool_calls": [tool_delta(0, "functions.read:0", "read", "")]}),
            layout.event({"tool_calls": [tool_delta(0, None, None, '{"path": "/a"}')]}),
            layout.event({}, "stop"),
            layout.event({}, "tool_calls"),
            layout.event({}, None, usage={"prompt_tokens": 1, "completion_tokens": 2}),
            layout.event({"content": "x"}, "stop"),
            b": keepalive\n\n",
            b"data: [DONE]\n\n",
        ]
    )
    kinds = [text_event] * 3 + ([other] if others else [])
    return draw(st.lists(st.one_of(*kinds), min_size=1, max_size=max_size))


def framed(layout: Layout, events: list[bytes]) -> tuple[bytes, list[int]]:
    """A role chunk, `events`, a finish and [DONE]; and the event boundaries."""
    parts = [layout.event({"role": "assistant", "content": ""}), *events, layout.event({}, "stop"), b"data: [DONE]\n\n"]
    return b"".join(parts), [sum(len(p) for p in parts[:i]) for i in range(1, len(parts))]


@settings(max_examples=300, deadline=None)
@given(LAYOUTS, FACTS, st.data())
def test_any_layout_delivers_identical_bytes_on_both_paths(layout, facts, data):
    body, boundaries = framed(layout, data.draw(stream_events(layout)))
    anywhere = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=4))
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), max_size=12)) + anywhere))
    assert run(body, cuts, True, facts) == run(body, cuts, False, facts)


@settings(max_examples=300, deadline=None)
@given(LAYOUTS, FACTS, st.data())
def test_any_layout_through_the_callable_and_its_lane_matches_the_full_path(layout, facts, data):
    body, boundaries = framed(layout, data.draw(stream_events(layout, others=False)))
    anywhere = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=4))
    cuts = sorted(set(data.draw(st.lists(st.sampled_from(boundaries), max_size=14)) + anywhere))
    assert streamed(body, cuts, True, facts) == streamed(body, cuts, False, facts)


@settings(max_examples=200, deadline=None)
@given(LAYOUTS, st.sampled_from([POLICY, NO_SPLIT]), st.data())
def test_any_layout_gives_the_turn_gate_the_same_verdict_on_both_paths(layout, policy, data):
    events = [layout.event({"role": "assistant", "content": ""}), *data.draw(stream_events(layout))]
    assert gated(events, True, policy) == gated(events, False, policy)


@settings(max_examples=200, deadline=None)
@given(LAYOUTS, st.sampled_from(TEXT_KEYS))
def test_every_layout_of_a_plain_delta_is_learned_and_taken(layout, key):
    """The fast path is not only safe on any layout, it is taken: after one event of a shape went
    the full path, the next ones of that shape take the fast path."""
    repairer = StreamRepairer(RequestFacts(0, {}, True, True), Policy.build(Flavor.SELFHOSTED, think_tags="keep"))
    first = layout.event({"role": "assistant", "content": ""})
    assert repairer.feed(first) == [first]
    seen = layout.event({key: "Hello"})
    assert repairer.feed(seen) == [seen]
    assert learn_template(seen, key, key != "content") is not None
    later = [layout.event({key: text}) for text in (" there", ", and é", ' "quoted"', "")]
    assert [repairer.plain_read(event) for event in later] == [1, 1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(LAYOUTS)
def test_every_layout_of_a_doubled_reasoning_delta_is_learned_and_taken(layout):
    """vLLM 0.13 writes each reasoning text under `reasoning` and `reasoning_content`: such a
    delta is a template of its own, taken when both texts are the same (and only then)."""
    repairer = StreamRepairer(RequestFacts(0, {}, True, True), POLICY)
    first = layout.event({"role": "assistant", "content": ""})
    assert repairer.feed(first) == [first]
    seen = layout.event(text_delta("both", "Hmm"))
    assert repairer.feed(seen) == [seen]
    assert [t.copies for t in repairer.fast.templates] == [2]
    later = [layout.event(text_delta("both", text)) for text in (" so", ", é", ' "q"', "\\", "")]
    assert [repairer.plain_read(event) for event in later] == [1, 1, 1, 1, 1]
    assert repairer.plain_read(layout.event(text_delta("split", "so"))) == 0
    assert repairer.plain_read(layout.event({"reasoning": "so", "reasoning_content": "so "})) == 0
    assert repairer.plain_read(layout.event({"reasoning": "so", "reasoning_content": "no"})) == 0
    assert repairer.plain_read(layout.event({"reasoning": "so\\", "reasoning_content": "so\\"})) == 1


TOOLS_FACTS = RequestFacts(0, {"read": {"type": "object"}}, True, True)
K3_FACTS = RequestFacts(0, {"read": {"type": "object"}}, True, True, k3_model=True)


@pytest.mark.parametrize("facts", [TOOLS_FACTS, K3_FACTS], ids=["tools", "k3"])
def test_a_doubled_reasoning_text_is_seen_under_both_names_on_the_fast_path(facts):
    """vLLM 0.13's layout: the fast path takes its doubled reasoning, and not an event whose second
    field differs only in its name; each name's markup scanner keeps what went out (the K3 copy,
    the tail a repeat is checked against) as on the full path."""
    layouts = _bench_layouts()
    events = layouts.text_stream("vllm-0.13.0", 3)
    more = [e.replace(b"thinking 0 ", f"step {n} ".encode()) for n, e in enumerate([events[1]] * 6)]
    renamed = more[0].replace(b'"reasoning_content"', b'"reasoning_kontent"')
    assert b'"reasoning":"step 0 ","reasoning_content":"step 0 "}' in more[0]
    scanners = []
    for fast in (True, False):
        repairer = StreamRepairer(facts, POLICY)
        repairer.fast_path = fast
        for raw in events[:2]:
            assert repairer.feed(raw) == [raw]
        taken = [repairer.plain_read(raw) for raw in more]
        assert taken == ([1] * 6 if fast else [0] * 6)
        for raw, read in zip(more, taken, strict=True):
            if not read:
                assert repairer.feed(raw) == [raw]
        assert repairer.plain_read(renamed) == 0
        assert repairer.plain_read(more[0].replace(b',"reasoning_content":"step 0 "', b"")) == 0  # one text
        state = repairer.choices[0].scanners
        scanners.append({key: (scanner.copy, scanner.tail) for key, scanner in state.items()})
    assert scanners[0] == scanners[1] and set(scanners[0]) >= {"reasoning", "reasoning_content"}


def fast_share(engine: str, respaced: bool = False) -> tuple[int, int]:
    """Of an engine's text and reasoning deltas in the corpus (its `1ch`, `1-4ch` and `4tok-steps`
    splits, the tools of the corpus declared), those the full path forwarded unchanged, and those
    of them the fast path took. `respaced`: each event written again with `json.dumps` defaults, as
    a Python gateway in front of the engine would."""
    taken = unchanged = 0
    for case in engine_corpus.load():
        if case.engine != engine:
            continue
        repairer = StreamRepairer(case.facts(), Policy.build(Flavor.SELFHOSTED))
        for raw in case.sse.split(b"\n\n"):
            if not raw:
                continue
            if respaced and raw.startswith(b"data: {"):
                raw = b"data: " + json.dumps(json.loads(raw[6:])).encode()
            raw += b"\n\n"
            fast = repairer.plain_read(raw)
            if fast:
                taken += 1
                unchanged += 1
            elif repairer.feed(raw) == [raw] and _text_delta(raw):
                unchanged += 1
    return taken, unchanged


def _text_delta(raw: bytes) -> bool:
    chunk = json.loads(raw[6:]) if raw.startswith(b"data: {") else {}
    choices = chunk.get("choices") or []
    if len(choices) != 1 or choices[0].get("finish_reason") is not None:
        return False
    delta = choices[0].get("delta") or {}
    return not delta.get("role") and any(type(delta.get(key)) is str and delta.get(key) for key in TEXT_KEYS)


# Of each engine's text deltas that the full path forwards unchanged, the share the fast path takes
# at least (compact as the engine writes them, and re-spaced). The rest are the first event of each
# shape (learned from) and the ones right after a read the scanner held. vLLM 0.13 writes reasoning
# twice (`reasoning` and `reasoning_content`, the same text): its templates have both.
MIN_SHARE = {
    "sglang-0.5.5": 0.7,
    "sglang-0.5.23": 0.7,
    "vllm-0.10.2": 0.7,
    "vllm-0.13.0": 0.7,
    "vllm-0.20.0": 0.7,
    "vllm-0.34.0": 0.7,
}


def test_every_engine_of_the_corpus_has_its_fast_path_share():
    assert {case.engine for case in engine_corpus.load()} == set(MIN_SHARE)


@pytest.mark.parametrize("respaced", [False, True], ids=["as_sent", "json_dumps_spacing"])
@pytest.mark.parametrize("engine", sorted(MIN_SHARE))
def test_each_engines_text_deltas_take_the_fast_path(engine, respaced):
    taken, unchanged = fast_share(engine, respaced)
    assert unchanged > 100 and taken >= MIN_SHARE[engine] * unchanged, (taken, unchanged)


def _bench_layouts():
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "scripts"))
    import bench_layouts

    return bench_layouts


def test_the_benchmarks_layout_streams_keep_each_servers_layout_and_take_the_fast_path():
    """scripts/bench_layouts.py's streams are the corpus's events with new texts: the layouts the
    rows are named for, whole OpenAI streams, taken by the fast path."""
    layouts = _bench_layouts()
    features = {
        "vllm-0.13.0": b'"reasoning":"thinking 0 ","reasoning_content":"thinking 0 "',
        "sglang-0.5.5": b'"tool_calls":null},"logprobs":null,"finish_reason":null,"matched_stop":null}],"usage":null}',
        "sglang-0.5.23": b'"finish_reason":null,"matched_stop":null}',
        "vllm-0.34.0": b'"finish_reason":null,"token_ids":null}],"kv_transfer_params":null}',
        "moonshot-like": b'{"content":"tok [sent_at]"},"finish_reason":null}]}',
        "gateway-spaced": b'"delta": {"role": null, "content": "tok [sent_at]", "reasoning_content": null}',
    }
    no_tools = RequestFacts(0, {}, True, True)
    for row in (*layouts.LAYOUTS, layouts.AGENT_TURN):
        events = layouts.stream(row, 40)
        assert events[-1] == b"data: [DONE]\n\n" and all(json.loads(e[6:]) for e in events[:-1])
        assert features.get(row, b"data: ") in b"".join(events), row
        share = layouts.fast_share(events, no_tools)
        assert share > 0.8, (row, share)
    turn = b"".join(layouts.agent_turn(40))
    assert turn.count(b'"name":"read"') == turn.count(b'"name":"exec"') == 1 and b'"arguments":"x' in turn
