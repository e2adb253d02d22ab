"""First, do no harm: the proxy never delivers a wire worse than the upstream's. One
named test per safety invariant; each failed on the code before it."""

import itertools
import json

import orjson
import pytest
from kimiwire.inspection.rerun import rerun_exchange
from kimiwire.wire.codecs.sse import SSEDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openai_errors import error_event
from kimiwire.wire.response import stream_repair, tool_calls
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.stream_repair import StreamRepairer, TurnSummary
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support import streams
from tests.support.conversations import TOOLS
from tests.support.piai_model import guide_accumulate, piai_parse
from tests.support.sse_reading import finish_reasons
from tests.support.streams import EXEC_ARGS, READ_ARGS, Stream, tool_delta

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
POLICY = Policy.build(Flavor.SELFHOSTED)
CUT_ARGS = '{"command": "rm -rf /w/'  # what json-repair would complete into exec({"command":"rm -rf /w/"})


def run(raw: bytes, policy: Policy = POLICY, tools=None, error: bytes | None = None):
    repairer = StreamRepairer(RequestFacts(0, dict(SCHEMAS if tools is None else tools), True, True), policy)
    out = repairer.feed(raw)
    out += repairer.end_with_error(error) if error is not None else repairer.end()
    return b"".join(out), repairer


def runnable(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False


def cut_call(first: list[tuple[str, str]] | None = None) -> Stream:
    """Complete calls, then an exec call whose arguments stop in the middle."""
    s = Stream().chunk({"role": "assistant", "content": ""})
    for i, (name, args) in enumerate(first or []):
        s.chunk(tool_delta(i, f"functions.{name}:{i}", name, "")).chunk(tool_delta(i, None, None, args))
    k = len(first or [])
    s.chunk(tool_delta(k, f"functions.exec:{k}", "exec", ""))
    for piece in streams.fragments(CUT_ARGS, 3):
        s.chunk(tool_delta(k, None, None, piece))
    return s


# -- (a) truncated output never becomes an action ----------------------------------------------


@pytest.mark.parametrize("ending", ["length", "body_ends", "done_only", "timeout"])
def test_a_arguments_are_never_completed_from_a_truncated_tail(ending):
    s = cut_call([("read", READ_ARGS)])
    error = None
    if ending == "length":
        s.chunk({}, "length").done()
    elif ending == "done_only":
        s.done()
    elif ending == "timeout":
        error = error_event("idle", "upstream_timeout", "upstream_idle_timeout")
    body, repairer = run(s.body(), error=error)
    calls = guide_accumulate(body)
    assert calls == [("functions.read:0", "read", READ_ARGS), ("functions.exec:1", "exec", CUT_ARGS)]
    assert piai_parse(body)["calls"][0][1:] == ("read", orjson.loads(READ_ARGS))
    assert not runnable(calls[1][2])
    assert "tool_calls" not in finish_reasons(body)
    if ending != "timeout":
        assert finish_reasons(body) == ["length"]  # upstream's kept; made up as `length` when missing
    assert "args.truncated" in repairer.log.kinds()
    assert repairer.turn.truncated and repairer.turn.tool_calls == 2
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_json_completion_cut_by_length_keeps_the_call_as_sent():
    call = {"id": "x", "type": "function", "function": {"name": "exec", "arguments": CUT_ARGS}}
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [call]}, "finish_reason": "length"}]
    }
    new, log, _ = repair_completion_body(orjson.dumps(body), RequestFacts(0, SCHEMAS, True, False), POLICY)
    out = orjson.loads(new) if new else body
    assert out["choices"][0]["message"]["tool_calls"] == [call]
    assert out["choices"][0]["finish_reason"] == "length"
    assert "args.truncated" in log.kinds()


# -- (b) every call reaches the client -----------------------------------------------------------

UNRESOLVABLE = {"exec": {"type": "object", "properties": {"command": {"$ref": "#/definitions/missing"}}}}
DEEP_ARGS = '{"a":' * 1100 + "1" + "}" * 1100


def schema_check_raises(monkeypatch):
    """The schema step raising, whatever the cause (an unresolvable `$ref` did, before the schema
    check learnt to catch it): what the call finisher must survive."""

    def boom(schema, value):
        raise RuntimeError("PointerToNowhere: '/definitions/missing'")

    monkeypatch.setattr(tool_calls, "check_arguments", boom)


@pytest.mark.parametrize("trigger", ["schema_step_raises", "nested_too_deep"])
def test_b_a_call_whose_repair_raises_goes_out_as_sent_and_none_is_lost(trigger, monkeypatch):
    if trigger == "schema_step_raises":
        schema_check_raises(monkeypatch)
    args = EXEC_ARGS if trigger == "schema_step_raises" else DEEP_ARGS
    calls = [("read", READ_ARGS), ("exec", args), ("read", READ_ARGS)]
    body, repairer = run(streams.interleaved(calls).body(), tools=UNRESOLVABLE)
    got = guide_accumulate(body)
    assert [(n, a) for _, n, a in got] == [(n, a) for n, a in calls]
    assert got[1][0] == "functions.exec:1"  # as the upstream sent it
    assert finish_reasons(body) == ["tool_calls"]
    assert "call.repair_failed" in repairer.log.kinds()


def test_b_a_json_call_whose_repair_raises_is_kept_as_sent(monkeypatch):
    schema_check_raises(monkeypatch)
    call = {"id": "up-1", "type": "function", "function": {"name": "exec", "arguments": EXEC_ARGS}}
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [call]}, "finish_reason": "stop"}]}
    new, log, _ = repair_completion_body(orjson.dumps(body), RequestFacts(0, UNRESOLVABLE, True, False), POLICY)
    out = orjson.loads(new) if new else body
    assert out["choices"][0]["message"]["tool_calls"] == [call]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert "call.repair_failed" in log.kinds()


def test_b_replay_does_not_crash_when_a_repair_raises(monkeypatch):
    def boom(self, data):
        raise RuntimeError("repair bug")

    monkeypatch.setattr(stream_repair.StreamRepairer, "feed", boom)
    upstream = streams.sglang([("read", READ_ARGS)]).body()
    result = rerun_exchange(b"{}", 200, "text/event-stream", upstream, POLICY)
    assert result.delivered == upstream and "repair.failed" in result.response_log.kinds()


# -- (c) an event the decoder cannot parse never splits a call ---------------------------------


@pytest.mark.parametrize("bad", ["nan", "invalid_utf8"])
def test_c_an_unparsable_event_turns_the_stream_to_passthrough_where_that_is_exact(bad):
    pieces = streams.fragments(READ_ARGS, 4)
    s = Stream().chunk({"role": "assistant", "content": ""}).chunk(tool_delta(0, "functions.read:0", "read", ""))
    s.chunk(tool_delta(0, None, None, pieces[0]))
    if bad == "nan":
        event = Stream().chunk(tool_delta(0, None, None, pieces[1]), choice_extra={"logprobs": 0.5}).events[0]
        event = event.replace(b"0.5", b"NaN")
    else:
        event = Stream().chunk(tool_delta(0, None, None, pieces[1])).events[0]
        event = event.replace(pieces[1][:1].encode(), b"\xff" + pieces[1][:1].encode(), 1)
    s.raw(event)
    for piece in pieces[2:]:
        s.chunk(tool_delta(0, None, None, piece))
    s.chunk({}, "tool_calls").done()
    raw = s.body()
    body, repairer = run(raw)
    rest = raw[raw.index(event) :]
    assert body.endswith(rest)  # from the bad event on: exactly the upstream's bytes
    held = body[: -len(rest)]
    assert guide_accumulate(held) == [("functions.read:0", "read", pieces[0])]  # the call's start, once
    if bad == "nan":
        assert guide_accumulate(body) == [("functions.read:0", "read", READ_ARGS)]
    assert "stream.passthrough" in repairer.log.kinds()


def test_c_an_unparsable_event_with_nothing_held_is_forwarded_and_repairs_go_on():
    raw = b"data: {not json\n\n" + streams.interleaved([("read", READ_ARGS), ("exec", EXEC_ARGS)]).body()
    body, repairer = run(raw)
    assert body.startswith(b"data: {not json\n\n")
    assert [c[1] for c in piai_parse(body[len(b"data: {not json\n\n") :])["calls"]] == ["read", "exec"]
    assert not repairer.bypass


# -- (d) every switch combination keeps finish_reason consistent with what was delivered --------

SWITCHES = list(itertools.product(["whole", "passthrough"], ["fix", "keep"], ["repair", "keep"], ["recover", "keep"]))


@pytest.mark.parametrize("tool_stream,finish,arguments,markup", SWITCHES)
def test_d_finish_reason_matches_what_was_delivered_for_every_switch_combination(
    tool_stream, finish, arguments, markup
):
    policy = Policy.build(Flavor.SELFHOSTED, tool_stream=tool_stream, finish=finish, arguments=arguments, markup=markup)
    calls_then_stop = Stream().chunk(tool_delta(0, "functions.read:0", "read", READ_ARGS)).chunk({}, "stop").done()
    body, _ = run(streams.sglang([("read", READ_ARGS), ("exec", EXEC_ARGS)]).body(), policy)
    assert finish_reasons(body) == ["tool_calls"] and len(guide_accumulate(body)) == 2
    body, _ = run(cut_call().chunk({}, "length").done().body(), policy)
    assert finish_reasons(body) == ["length"] and not runnable(guide_accumulate(body)[0][2])
    body, _ = run(cut_call().body(), policy)  # the body just ends
    assert finish_reasons(body) == ["length"]
    body, _ = run(calls_then_stop.body(), policy)
    assert finish_reasons(body) == (["tool_calls"] if finish == "fix" else ["stop"])


# -- (e) a finish_reason in every stream; none that promises a call that is not there ----------


def test_e_a_stream_that_ends_without_finish_reason_gets_one_before_done():
    raw = Stream().chunk({"role": "assistant", "content": ""}).chunk({"content": "Hello."}).done().body()
    body, repairer = run(raw)
    events = [e for e in body.split(b"\n\n") if e]
    assert finish_reasons(body) == ["stop"] and events[-1] == b"data: [DONE]"
    assert b'"finish_reason":"stop"' in events[-2]
    assert "finish_reason.synthesized" in repairer.log.kinds()
    assert repairer.turn == TurnSummary(
        content=True, reasoning=False, tool_calls=0, finish_reason="stop", truncated=False, done=True
    )


@pytest.mark.parametrize("tool_stream", ["whole", "passthrough"])
def test_e_tool_calls_without_a_call_becomes_stop_and_empty_arrays_are_dropped(tool_stream):
    # vllm-project/vllm#54701: under load only `tool_calls: []` deltas, then finish `tool_calls`
    s = Stream().chunk({"role": "assistant", "content": ""})
    for _ in range(3):
        s.chunk({"tool_calls": []})
    raw = s.chunk({"tool_calls": []}, "tool_calls").done().body()
    body, repairer = run(raw, Policy.build(Flavor.SELFHOSTED, tool_stream=tool_stream))
    assert b'"tool_calls":[]' not in body
    assert finish_reasons(body) == ["stop"]
    assert "finish_reason.no_calls" in repairer.log.kinds()
    turn = repairer.turn
    assert (turn.content, turn.reasoning, turn.tool_calls, turn.finish_reason) == (False, False, 0, "stop")


def test_e_passthrough_with_finish_fix_keeps_tool_calls_when_calls_were_streamed():
    # with passthrough tool deltas the calls still count: `tool_calls` must not become `stop`
    raw = streams.sglang([("read", READ_ARGS)]).body()
    body, repairer = run(raw, Policy.build(Flavor.SELFHOSTED, tool_stream="passthrough"))
    assert finish_reasons(body) == ["tool_calls"]
    assert repairer.turn.tool_calls == 1


def test_b_a_repair_raising_mid_chunk_keeps_what_earlier_events_of_that_chunk_produced(monkeypatch):
    # Call 0 completes (call 1 starts with call 0's JSON closed) and goes out within one upstream
    # read; a later event of the same read raises. Before, the adapter threw the whole read's
    # output away and sent only the raw read, so call 0's earlier fragments were lost.
    original = StreamRepairer._event
    seen = {"n": 0}

    def flaky(self, event, out):
        seen["n"] += 1
        if seen["n"] == len(events) - 2:
            raise RuntimeError("repair bug")
        return original(self, event, out)

    calls = [("read", READ_ARGS), ("exec", EXEC_ARGS)]
    raw = streams.sglang(calls).body()
    events = SSEDecoder().feed(raw)
    monkeypatch.setattr(StreamRepairer, "_event", flaky)
    body, repairer = run(raw)
    assert repairer.failure is not None and "repair.failed" in repairer.log.kinds()
    assert [(n, a) for _, n, a in guide_accumulate(body)] == calls
    assert [c[1:] for c in piai_parse(body)["calls"]] == [(n, orjson.loads(a)) for n, a in calls]
