"""Never worse than direct, as a property: random upstream streams in every server's
shape go through the repairer and are read back by two client models, pi-ai's one-current-block
parser and the accumulation OpenAI's function-calling guide shows. Every call the model completed
must arrive exact and in the model's order; a call cut off in its arguments must never arrive
runnable, and the turn must not claim `tool_calls` then."""

import json
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.piai_model import guide_accumulate, piai_parse
from tests.support.sse_reading import finish_reasons
from tests.support.streams import Stream

SHAPES = ("sglang", "vllm", "vllm_bundled", "moonshot", "deepinfra")
TOOLS = {"read": {"type": "object"}, "exec": {"type": "object"}, "write": {"type": "object"}}
POLICY = Policy.build(Flavor.SELFHOSTED)

TEXT = st.text(alphabet=st.sampled_from('ab /-é{}"\\:,\n'), min_size=1, max_size=6)
ARGUMENTS = st.dictionaries(
    st.sampled_from(["path", "command", "content", "n"]),
    st.one_of(TEXT, st.integers(-5, 10**6), st.booleans(), st.lists(TEXT, max_size=2)),
    min_size=1,
    max_size=3,
)


@dataclass
class Call:
    name: str
    arguments: str
    pieces: list[str]


def server_id(shape: str, name: str, i: int) -> str:
    return f"{name}:{i}" if shape == "moonshot" else f"functions.{name}:{i}"


def tool_events(shape: str, i: int, call: Call) -> list[dict]:
    """The deltas of one call in `shape`, in order (the first is the call's start)."""
    head = {"id": server_id(shape, call.name, i), "type": "function", "function": {"name": call.name}}
    if shape != "vllm":
        head["function"]["arguments"] = ""
    if shape != "moonshot":
        head = {"index": i, **head}
    pieces = list(call.pieces)
    if shape == "vllm_bundled" and pieces:  # vLLM: the start and the first fragment in one delta
        head["function"].pop("arguments")
        first = {"tool_calls": [head, {"index": i, "function": {"arguments": pieces.pop(0)}}]}
    else:
        first = {"tool_calls": [head]}
    deltas = [first]
    for piece in pieces:
        if shape == "moonshot":
            fragment = {"function": {"arguments": piece}}
        elif shape == "sglang":
            fragment = {"index": i, "id": None, "type": "function", "function": {"name": None, "arguments": piece}}
        else:
            fragment = {"index": i, "function": {"arguments": piece}}
        deltas.append({"tool_calls": [fragment]})
    return deltas


@st.composite
def upstream_turns(draw):
    shape = draw(st.sampled_from(SHAPES))
    calls = []
    for _ in range(draw(st.integers(1, 3))):
        arguments = json.dumps(draw(ARGUMENTS), ensure_ascii=draw(st.booleans()))
        cuts = sorted(set(draw(st.lists(st.integers(1, len(arguments) - 1), max_size=6))))
        pieces = [arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)]
        calls.append(Call(draw(st.sampled_from(sorted(TOOLS))), arguments, pieces))
    per_call = [tool_events(shape, i, c) for i, c in enumerate(calls)]
    # (call number, delta): interleaved by index where the shape has one, else one call after another
    order: list[tuple[int | None, dict]] = []
    if shape != "moonshot" and draw(st.booleans()):
        # Fragments interleave, but calls start in index order: a server's parser numbers a call
        # when its first token arrives, so index k+1 never starts before index k.
        queues = [list(d) for d in per_call]
        started = 0
        while any(queues):
            i = draw(st.sampled_from([k for k, q in enumerate(queues) if q and k <= started]))
            started = max(started, i + 1)
            order.append((i, queues[i].pop(0)))
    else:
        order = [(i, d) for i, deltas in enumerate(per_call) for d in deltas]
    # reasoning or content between fragments
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["reasoning_content", "reasoning", "content"]))
        order.insert(draw(st.integers(0, len(order))), (None, {key: draw(TEXT)}))
    cut = draw(st.none() | st.integers(0, len(order)))
    if cut is not None:
        order = order[:cut]
    ending = draw(st.sampled_from(["finish", "length", "none"] if cut is not None else ["finish", "none"]))
    done = draw(st.booleans())
    return shape, calls, order, cut is not None, ending, done


def sent_arguments(order: list) -> dict[int, str]:
    """What the upstream sent of the arguments of each call it started, by call number."""
    sent: dict[int, str] = {}
    for i, delta in order:
        if i is not None:
            for entry in delta["tool_calls"]:
                sent[i] = sent.get(i, "") + (entry.get("function", {}).get("arguments") or "")
    return dict(sorted(sent.items()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upstream_turns(), st.lists(st.integers(0, 10_000), max_size=8))
def test_never_worse_than_direct(turn, tcp_cuts):
    _, calls, order, _, ending, done = turn
    s = Stream().chunk({"role": "assistant", "content": ""})
    for _, delta in order:
        s.chunk(delta)
    if ending != "none":
        s.chunk({}, "tool_calls" if ending == "finish" else "length")
    if done:
        s.done()
    raw = s.body()
    repairer = StreamRepairer(RequestFacts(0, TOOLS, True, True), POLICY)
    cuts = sorted({c % (len(raw) + 1) for c in tcp_cuts})
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        out += repairer.feed(raw[a:b])
    out += repairer.end()
    body = b"".join(out)

    sent = sent_arguments(order)
    started = [calls[i] for i in sent]  # in the model's (index) order
    complete = [sent[i] == calls[i].arguments for i in sent]
    # A call with no arguments at all when the model itself ended the turn means "no arguments"
    # (`{}`); any other incomplete call was cut off.
    empty_call = [sent[i] == "" and ending == "finish" for i in sent]
    cut_off = [not whole and not empty for whole, empty in zip(complete, empty_call, strict=True)]
    guide = guide_accumulate(body)
    assert [name for _, name, _ in guide] == [c.name for c in started]  # every call, in order
    for (_, _, arguments), call, whole, empty in zip(guide, started, complete, empty_call, strict=True):
        if whole:
            assert json.loads(arguments) == json.loads(call.arguments)
        elif empty:
            assert arguments == "{}"
        else:
            try:
                runnable = isinstance(json.loads(arguments), dict)
            except ValueError:
                runnable = False
            assert not runnable, arguments
    reasons = finish_reasons(body)
    upstream_reason = {"finish": "tool_calls", "length": "length", "none": None}[ending]
    assert len(reasons) == 1
    if any(cut_off):  # `length` whatever the upstream said: a cut call is never a call to run (vllm #47761)
        assert reasons == ["length"]
    elif sent and ending != "length":
        assert reasons == ["tool_calls"]
    piai = piai_parse(body)
    if not any(cut_off):
        assert [(name, args) for _, name, args in piai["calls"]] == [
            (c.name, {} if empty else json.loads(c.arguments)) for c, empty in zip(started, empty_call, strict=True)
        ]
    elif upstream_reason != "tool_calls":
        assert piai["stop"] != "toolUse"
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: [DONE]") == 1
