import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.codecs.sse import SSEDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support import streams
from tests.support.conversations import TOOLS
from tests.support.piai_model import guide_accumulate, piai_parse
from tests.support.streams import EXEC_ARGS, READ_ARGS, Stream, tool_delta

TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
POLICY = Policy.build(Flavor.SELFHOSTED)
TWO = [("read", READ_ARGS), ("exec", EXEC_ARGS)]


def facts(history: int = 0) -> RequestFacts:
    return RequestFacts(history, dict(TOOL_SCHEMAS), True, True)


def repair(body: bytes, pieces: list[int] | None = None, history: int = 0, policy: Policy = POLICY):
    repairer = StreamRepairer(facts(history), policy)
    cuts = pieces or []
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        for chunk in repairer.feed(body[a:b]):
            assert chunk, "never an empty chunk mid-stream (it would end a chunked body)"
            out.append(chunk)
    out += repairer.end()
    return b"".join(out), repairer


def events(body: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return [e.data for e in decoder.feed(body) + decoder.end() if e.data is not None]


def expected_calls(calls, history=0):
    return [(f"functions.{n}:{history + i}", n, orjson.loads(a)) for i, (n, a) in enumerate(calls)]


SHAPES = {
    "sglang": lambda: streams.sglang(TWO),
    "vllm": lambda: streams.vllm(TWO),
    "moonshot": lambda: streams.moonshot(TWO),
    "interleaved": lambda: streams.interleaved(TWO),
    "whole_in_one_chunk": lambda: streams.whole_calls_in_one_chunk(TWO),
    "markup": lambda: streams.markup_leak(TWO),
    "markup_bare": lambda: streams.markup_leak(TWO, bare=True),
    "markup_in_reasoning": lambda: streams.markup_leak(TWO, where="reasoning_content"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_one_current_block_client_gets_exact_calls(shape):
    body, _ = repair(SHAPES[shape]().body(), history=5)
    parsed = piai_parse(body)
    assert parsed["calls"] == expected_calls(TWO, history=5)
    assert parsed["stop"] == "toolUse"
    assert "<|tool_call" not in parsed["text"] + parsed["thinking"]
    assert "functions." not in parsed["text"]
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("shape", ["interleaved", "markup", "markup_bare", "moonshot"])
def test_the_same_shapes_break_the_client_without_repair(shape):
    parsed = piai_parse(SHAPES[shape]().body())
    assert parsed["calls"] != expected_calls(TWO) or parsed["stop"] != "toolUse"


def test_reasoning_between_fragments():
    raw = streams.reasoning_between_fragments("read", READ_ARGS).body()
    broken = piai_parse(raw)
    assert broken["calls"][0][2] != orjson.loads(READ_ARGS)  # pi-ai runs the tool with a truncated path
    body, _ = repair(raw)
    parsed = piai_parse(body)
    assert parsed["calls"] == expected_calls([("read", READ_ARGS)])
    assert parsed["thinking"] == "The user wants the file read. (still thinking)"


def test_each_call_goes_out_as_openai_streams_it():
    # one delta carrying the whole arguments would be doubled by a client that
    # adds up every delta's arguments, the first included (OpenAI's function-calling guide).
    body, repairer = repair(streams.sglang(TWO).body())
    tool_events = [orjson.loads(e) for e in events(body) if b'"tool_calls":[' in e]
    deltas = [ev["choices"][0]["delta"]["tool_calls"] for ev in tool_events]
    assert [len(d) for d in deltas] == [1, 1, 1, 1]
    assert [d[0] for d in deltas] == [
        {"index": 0, "id": "functions.read:0", "type": "function", "function": {"name": "read", "arguments": ""}},
        {"index": 0, "function": {"arguments": READ_ARGS}},
        {"index": 1, "id": "functions.exec:1", "type": "function", "function": {"name": "exec", "arguments": ""}},
        {"index": 1, "function": {"arguments": EXEC_ARGS}},
    ]
    assert guide_accumulate(body) == [("functions.read:0", "read", READ_ARGS), ("functions.exec:1", "exec", EXEC_ARGS)]
    assert "stream.tool_call_joined" in repairer.log.kinds()


def test_calls_leave_in_the_models_index_order():
    # index 1 closing before index 0 must not go out first, renumbered index 0.
    s = Stream().chunk({"role": "assistant", "content": ""})
    s.chunk(tool_delta(0, "functions.exec:0", "exec", ""))
    s.chunk(tool_delta(1, "functions.read:1", "read", ""))
    s.chunk(tool_delta(0, None, None, EXEC_ARGS[:10]))
    s.chunk(tool_delta(1, None, None, READ_ARGS))
    s.chunk(tool_delta(2, "functions.read:2", "read", READ_ARGS))  # index 1 is complete now, 0 is not
    s.chunk(tool_delta(0, None, None, EXEC_ARGS[10:]))
    body, _ = repair(s.chunk({}, "tool_calls").done().body())
    expected = [("exec", orjson.loads(EXEC_ARGS)), ("read", orjson.loads(READ_ARGS)), ("read", orjson.loads(READ_ARGS))]
    assert [c[1:] for c in piai_parse(body)["calls"]] == expected
    assert [(i, n, orjson.loads(a)) for i, n, a in guide_accumulate(body)] == [
        (f"functions.{n}:{k}", n, a) for k, (n, a) in enumerate(expected)
    ]
    indexes = [
        tc["index"]
        for e in events(body)
        if b"tool_calls" in e and e != b"[DONE]"
        for tc in orjson.loads(e)["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert indexes == [0, 0, 1, 1, 2, 2]


def test_a_call_that_starts_first_with_a_later_index_leaves_after_the_earlier_index():
    # the model's order is the index order, whatever order the deltas come in
    s = Stream().chunk(tool_delta(1, "functions.write:1", "exec", ""))
    s.chunk(tool_delta(1, None, None, EXEC_ARGS))
    s.chunk(tool_delta(0, "functions.mkdir:0", "read", ""))
    s.chunk(tool_delta(0, None, None, READ_ARGS))
    body, _ = repair(s.chunk({}, "tool_calls").done().body())
    assert piai_parse(body)["calls"] == expected_calls(TWO)
    assert [a for _, _, a in guide_accumulate(body)] == [READ_ARGS, EXEC_ARGS]


def test_a_later_index_that_completes_first_waits():
    s = Stream().chunk(tool_delta(0, "a", "exec", '{"command": '))
    s.chunk(tool_delta(1, "b", "read", READ_ARGS))
    s.chunk(tool_delta(2, "c", "read", READ_ARGS))
    repairer = StreamRepairer(facts(), POLICY)
    assert b"".join(repairer.feed(s.body())) == b""  # index 0 is open: nothing may pass it
    out = b"".join(repairer.feed(Stream().chunk(tool_delta(0, None, None, '"ls"}')).body()))
    out += b"".join(repairer.feed(Stream().chunk(tool_delta(3, "d", "read", "{}")).body()))
    assert [c[1] for c in piai_parse(out)["calls"]] == ["exec", "read", "read"]


def test_text_goes_out_in_the_same_event_unchanged():
    raw = streams.text_answer().body()
    body, repairer = repair(raw)
    assert body == raw  # nothing to repair: byte for byte
    assert not repairer.log


def test_first_call_goes_out_when_the_next_starts():
    s = Stream().chunk(tool_delta(0, "functions.read:0", "read", READ_ARGS))
    s.chunk(tool_delta(1, "functions.exec:1", "exec", ""))
    repairer = StreamRepairer(facts(), POLICY)
    first = b"".join(repairer.feed(s.events[0]))
    assert first == b""  # held: the call may not be complete yet
    second = b"".join(repairer.feed(s.events[1]))
    assert b'"name":"read"' in second and b'"name":"exec"' not in second


def test_empty_arguments_become_an_object_and_are_reported():
    raw = Stream().chunk(tool_delta(0, "functions.read:0", "read", "")).chunk({}, "tool_calls").done().body()
    body, repairer = repair(raw)
    assert piai_parse(body)["calls"] == [("functions.read:0", "read", {})]
    assert {"args.empty", "args.schema_violation"} <= set(repairer.log.kinds())


def test_double_encoded_and_duplicated_arguments():
    raw = (
        Stream()
        .chunk(tool_delta(0, "x", "read", orjson.dumps(READ_ARGS).decode()))
        .chunk(tool_delta(1, "y", "exec", EXEC_ARGS + EXEC_ARGS))
        .chunk({}, "tool_calls")
        .done()
        .body()
    )
    body, repairer = repair(raw)
    assert piai_parse(body)["calls"] == expected_calls(TWO)
    assert {"args.double_encoded", "args.duplicated"} <= set(repairer.log.kinds())


def test_undeclared_tool_and_schema_violation_are_recorded_not_altered():
    raw = (
        Stream()
        .chunk(tool_delta(0, "a", "delete_all", "{}"))
        .chunk(tool_delta(1, "b", "read", '{"path": 3}'))
        .chunk({}, "tool_calls")
        .done()
        .body()
    )
    body, repairer = repair(raw)
    assert [c[1:] for c in piai_parse(body)["calls"]] == [("delete_all", {}), ("read", {"path": 3})]
    kinds = repairer.log.kinds()
    assert "tool.undeclared" in kinds and "args.schema_violation" in kinds


def test_finish_reason_stop_after_tool_calls_becomes_tool_calls():
    raw = Stream().chunk(tool_delta(0, "a", "read", READ_ARGS)).chunk({}, "stop").done().body()
    body, repairer = repair(raw)
    assert piai_parse(body)["stop"] == "toolUse"
    assert "finish_reason.fixed" in repairer.log.kinds()


def test_stream_cut_before_finish_reason_still_delivers_the_call():
    s = Stream().chunk({"role": "assistant", "content": ""}).chunk(tool_delta(0, "a", "read", ""))
    for piece in streams.fragments(READ_ARGS, 3):
        s.chunk(tool_delta(0, None, None, piece))
    body, repairer = repair(s.body())  # no finish, no [DONE], the body just ends
    parsed = piai_parse(body)
    assert parsed["calls"] == expected_calls([("read", READ_ARGS)])
    assert parsed["stop"] == "toolUse"
    assert {"done.synthesized", "finish_reason.synthesized"} <= set(repairer.log.kinds())


def test_done_before_finish_flushes_calls_first():
    raw = Stream().chunk(tool_delta(0, "a", "read", READ_ARGS)).done().body()
    body, _ = repair(raw)
    datas = events(body)
    assert datas[-1] == b"[DONE]" and b"tool_calls" in datas[-2] and b'"read"' in datas[-4]


def test_usage_in_choice_is_also_put_at_top_level():
    body, repairer = repair(streams.moonshot(TWO).body())
    finals = [orjson.loads(e) for e in events(body) if e != b"[DONE]" and b'"finish_reason":"tool_calls"' in e]
    assert finals[0]["usage"]["total_tokens"] == 15
    assert finals[0]["choices"][0]["usage"]["total_tokens"] == 15
    assert "usage.hoisted" in repairer.log.kinds()


@pytest.mark.parametrize(
    "mode,present,absent",
    [("reasoning_content", "reasoning_content", "reasoning"), ("reasoning", "reasoning", "reasoning_content")],
)
def test_reasoning_field_option(mode, present, absent):
    body, _ = repair(streams.vllm(TWO).body(), policy=Policy.build(Flavor.SELFHOSTED, reasoning_field=mode))
    thinking = [orjson.loads(e)["choices"][0]["delta"] for e in events(body) if b"Let me think" in e]
    assert thinking and all(present in d and absent not in d for d in thinking)


def test_concatenated_text_equals_upstream_minus_markup():
    raw = streams.markup_leak(TWO, pieces=13).body()
    body, _ = repair(raw)
    assert piai_parse(body)["text"] == "I'll read it. "


def test_passthrough_option_leaves_tool_deltas():
    raw = streams.interleaved(TWO).body()
    body, _ = repair(raw, policy=Policy.build(Flavor.SELFHOSTED, tool_stream="passthrough"))
    assert piai_parse(body)["calls"] == piai_parse(raw)["calls"]


def test_buffer_limit_forwards_unrepaired_and_stays_bounded():
    big = '{"path": "' + "x" * 5000 + '"}'
    raw = streams.sglang([("read", big)], n_fragments=50).body()
    policy = Policy.build(Flavor.SELFHOSTED, stream_buffer_limit=2048)
    repairer = StreamRepairer(facts(), policy)
    out = []
    peak = 0
    for i in range(0, len(raw), 300):
        out += repairer.feed(raw[i : i + 300])
        peak = max(peak, repairer.buffered)
    out += repairer.end()
    assert peak <= 2048 + 300
    assert "stream.buffer_limit" in repairer.log.kinds()
    # nothing is lost: the held fragments went out as they were, then the rest of the stream
    assert piai_parse(b"".join(out))["calls"] == [("functions.read:0", "read", {"path": "x" * 5000})]


def test_events_after_done_are_dropped_and_comments_pass():
    raw = b": ping\n\n" + streams.text_answer().body() + b'data: {"late": 1}\n\n'
    body, repairer = repair(raw)
    assert body.startswith(b": ping\n\n") and body.endswith(b"data: [DONE]\n\n")
    assert "stream.after_done" in repairer.log.kinds()


def test_unparsable_events_are_forwarded_as_they_are():
    raw = b"data: {not json\n\n" + b'data: {"error": {"message": "boom"}}\n\n' + b"data: [DONE]\n\n"
    body, _ = repair(raw)
    assert body == raw


ALL_SHAPES_BODY = b"".join(
    [streams.sglang(TWO).body().replace(b"data: [DONE]\n\n", b""), streams.markup_leak(TWO, bare=True).body()]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(ALL_SHAPES_BODY)), max_size=15))
def test_output_events_do_not_depend_on_how_the_bytes_are_split(cuts):
    whole, _ = repair(ALL_SHAPES_BODY)
    split, _ = repair(ALL_SHAPES_BODY, sorted(set(cuts)))
    assert events(split) == events(whole)


@pytest.mark.parametrize("shape", ["sglang", "markup", "interleaved"])
def test_every_single_byte_cut(shape):
    raw = SHAPES[shape]().body()
    whole, _ = repair(raw)
    for cut in range(len(raw) + 1):
        split, _ = repair(raw, [cut])
        assert events(split) == events(whole), cut


TEXT_PIECES = st.sampled_from(
    [
        "hello",
        " ",
        "",
        "<|tool",
        "_call",
        "s_section_begin|>",
        "functions.",
        "read:0",
        '{"path": "/a"}',
        "fun",
        "é",
        "\n",
    ]
)
TEXT_DELTAS = st.fixed_dictionaries(
    {},
    optional={
        "content": st.lists(TEXT_PIECES, max_size=4).map("".join),
        "reasoning_content": st.lists(TEXT_PIECES, max_size=3).map("".join),
        "reasoning": st.lists(TEXT_PIECES, max_size=2).map("".join),
        "role": st.just("assistant"),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(TEXT_DELTAS, max_size=12),
    st.sampled_from(["recover", "keep"]),
    st.sampled_from(["keep", "reasoning_content"]),
)
def test_the_unchanged_shortcut_delivers_what_the_full_path_delivers(deltas, markup, reasoning_field):
    s = Stream()
    for delta in deltas:
        s.chunk(delta)
    raw = s.chunk({}, "stop").done().body()
    policy = Policy.build(Flavor.SELFHOSTED, markup=markup, reasoning_field=reasoning_field)
    fast, _ = repair(raw, policy=policy)
    full_path = StreamRepairer(facts(), policy)
    full_path._passes_unchanged = lambda choice: False  # every event through _process_choice
    slow = b"".join([*full_path.feed(raw), *full_path.end()])
    assert fast == slow
