"""Retries, sans-IO: the policy (reasons, backoff, Retry-After, budget), the turn gate over what the
stream repairer delivers, the continuation of a retry into the client's response, and the
simulator's turn faults."""

import email.utils

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings
from kimiwire.wire.codecs.sse import SSEDecoder
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.retry.continuation import Continuation
from kimiwire.wire.retry.outcome import Failure, exhausted_answer, exhausted_events
from kimiwire.wire.retry.policy import (
    DEFAULT_RETRY_ON,
    RetryPolicy,
    backoff_delay,
    decide,
    retry_after_seconds,
)
from kimiwire.wire.retry.turn_gate import TurnGate, completion_seen, judge, upstream_started_calls
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.conversations import TOOLS
from tests.support.streams import READ_ARGS, Stream, tool_delta

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
FACTS = RequestFacts(0, dict(SCHEMAS), True, True)
POLICY = Policy.build(Flavor.SELFHOSTED)
CHECKS = RetryPolicy().turn_checks()


def data(events):
    decoder = SSEDecoder()
    return [e.data for e in decoder.feed(b"".join(events)) + decoder.end() if e.data is not None]


def chunks(events):
    return [orjson.loads(d) for d in data(events) if d != b"[DONE]"]


# -- policy -----------------------------------------------------------------------------------


def test_policy_parses_the_option_and_rejects_unknown_reasons():
    assert RetryPolicy.parse(DEFAULT_RETRY_ON, 2, 120).reasons == frozenset(
        {"empty", "reasoning_only", "stall", "connect", "status", "invalid_call", "forced_tool"}
    )
    assert not RetryPolicy.parse("", 2, 120).active
    assert RetryPolicy.parse("empty, schema", 1, 5).turn_checks() == {"empty", "schema"}
    with pytest.raises(ValueError, match="bogus"):
        RetryPolicy.parse("empty,bogus", 2, 120)
    with pytest.raises(ValueError):
        RetryPolicy.parse("empty", -1, 120)


def test_backoff_doubles_with_full_jitter_and_is_capped():
    assert backoff_delay(1, 0.5, 0.999) == pytest.approx(0.4995)
    assert backoff_delay(2, 0.5, 0.999) == pytest.approx(0.999)
    assert backoff_delay(3, 0.5, 0.5) == pytest.approx(1.0)
    assert backoff_delay(1, 0.5, 0.0) == 0.0
    assert backoff_delay(40, 0.5, 0.999) <= 30.0


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_seconds("3", 0) == 3.0
    now = 1_700_000_000.0
    assert retry_after_seconds(email.utils.formatdate(now + 7, usegmt=True), now) == pytest.approx(7, abs=1)
    assert retry_after_seconds("garbage", now) is None
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("-5", now) == 0.0


def test_decide_counts_attempts_and_keeps_to_the_budget():
    policy = RetryPolicy.parse(DEFAULT_RETRY_ON, 2, 10, backoff=1.0)
    assert decide(policy, "empty", 1, 0.0, 0.5) == decide(policy, "empty", 1, 0.0, 0.5)
    first = decide(policy, "empty", 1, 0.0, 0.5)
    assert first.retry and first.delay == pytest.approx(0.5)
    assert decide(policy, "empty", 2, 1.0, 0.5).delay == pytest.approx(1.0)
    third = decide(policy, "empty", 3, 2.0, 0.5)
    assert not third.retry and "2 retries" in third.why_not
    assert not decide(policy, "schema", 1, 0.0, 0.5).retry  # opt-in
    late = decide(policy, "status", 1, 9.8, 0.5)
    assert not late.retry and "budget" in late.why_not
    waits = decide(policy, "status", 1, 0.0, 0.1, retry_after=4.0)
    assert waits.retry and waits.delay == 4.0
    assert not decide(policy, "status", 1, 0.0, 0.1, retry_after=30.0).retry  # past the budget
    assert not decide(RetryPolicy.parse(DEFAULT_RETRY_ON, 0, 10), "empty", 1, 0.0, 0.5).retry


# -- the turn gate ----------------------------------------------------------------------------


def gated(body: bytes, checks=CHECKS, policy=POLICY, hold_calls=True):
    repairer = StreamRepairer(FACTS, policy)
    gate = TurnGate(FACTS, checks, hold_calls and policy.tool_stream == "whole")
    delivered = []
    for piece in [body[i : i + 37] for i in range(0, len(body), 37)]:
        delivered += gate.feed(repairer.feed(piece))
    delivered += gate.feed(repairer.end())
    return gate, delivered


def sglang_empty() -> bytes:
    """sglang#23341: role chunk, finish stop with matched_stop, usage, [DONE]."""
    s = Stream().chunk({"role": "assistant", "content": ""})
    s.chunk({}, "stop", choice_extra={"matched_stop": 163586})
    s.raw(b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":0}}\n\n')
    return s.done().body()


def test_an_empty_turn_delivers_the_role_and_holds_its_ending():
    gate, delivered = gated(sglang_empty())
    assert [c["choices"][0]["delta"] for c in chunks(delivered)] == [{"role": "assistant", "content": ""}]
    verdict = gate.verdict()
    assert verdict is not None and verdict.kind == "empty" and "stop" in verdict.detail
    assert gate.role_delivered and gate.template["id"] == "chatcmpl-1"
    held = data(gate.held)
    assert held[-1] == b"[DONE]" and any(b'"usage"' in d for d in held)
    assert data(gate.open())[-1] == b"[DONE]"


def test_reasoning_goes_out_and_a_reasoning_only_turn_is_judged_so():
    body = Stream().chunk({"role": "assistant"}).chunk({"reasoning": "Let me think."}).chunk({}, "stop").done().body()
    gate, delivered = gated(body)
    assert [c["choices"][0]["delta"] for c in chunks(delivered)][1] == {"reasoning": "Let me think."}
    assert gate.verdict().kind == "reasoning_only"
    assert gated(body, checks=frozenset({"empty"}))[0].verdict() is None


def test_empty_tool_arrays_are_an_empty_turn():
    """vllm#54701: only `tool_calls: []` deltas, then finish tool_calls without a call."""
    s = Stream().chunk({"role": "assistant", "content": ""})
    for _ in range(3):
        s.chunk({"tool_calls": []})
    gate, _ = gated(s.chunk({}, "tool_calls").done().body())
    assert gate.verdict().kind == "empty"


def test_content_proves_the_turn_and_releases_what_was_held_in_order():
    body = (
        Stream()
        .chunk({"role": "assistant"})
        .chunk(tool_delta(0, "functions.read:0", "read", READ_ARGS))
        .chunk(tool_delta(1, "functions.read:1", "read", ""))
        .chunk({"content": "and some text"})
        .chunk(tool_delta(1, None, None, READ_ARGS))
        .chunk({}, "tool_calls")
        .done()
        .body()
    )
    gate, delivered = gated(body)
    assert gate.proven and gate.verdict() is None and not gate.held
    kinds = [next(iter(c["choices"][0]["delta"] or {"finish": 1})) for c in chunks(delivered)]
    runs = [k for n, k in enumerate(kinds) if n == 0 or kinds[n - 1] != k]  # a call may take two deltas
    assert runs == ["role", "tool_calls", "content", "tool_calls", "finish"]
    assert data(delivered)[-1] == b"[DONE]"


def test_whitespace_content_does_not_prove_a_turn():
    body = Stream().chunk({"role": "assistant"}).chunk({"content": "\n\n"}).chunk({}, "stop").done().body()
    assert gated(body)[0].verdict().kind == "empty"


def call_turn(arguments: str) -> bytes:
    s = Stream().chunk({"role": "assistant"}).chunk({"reasoning_content": "I read it."})
    s.chunk(tool_delta(0, "functions.read:0", "read", ""))
    s.chunk(tool_delta(0, None, None, arguments))
    return s.chunk({}, "tool_calls").done().body()


def test_a_valid_call_is_held_until_the_end_then_released():
    gate, delivered = gated(call_turn(READ_ARGS))
    assert all(b"tool_calls" not in d for d in data(delivered))
    assert gate.verdict() is None
    released = chunks(gate.open())
    deltas = [tc for c in released for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert "".join(d["function"].get("arguments") or "" for d in deltas) == READ_ARGS
    assert gate.seen.calls == [("read", READ_ARGS)]


def test_calls_with_markup_or_unparseable_arguments_are_invalid():
    markup = '{"path": "/w/a.txt <|tool_calls_section_begin|><|tool_call_begin|>functions.read:1"}'
    # With markup recovery off, the call with markup in its arguments reaches the gate: invalid.
    verdict = gated(call_turn(markup), policy=Policy.build(Flavor.SELFHOSTED, markup="keep"))[0].verdict()
    assert verdict.kind == "invalid_call" and "markup" in verdict.detail
    # With it on (the default), the call is never delivered (its embedded call is cut): the turn
    # is left with reasoning only, which is retried too.
    gate, delivered = gated(call_turn(markup))
    assert gate.verdict().kind == "reasoning_only" and b"tool_calls_section_begin" not in b"".join(delivered)
    verdict = gated(call_turn('{"path": "/w/a.txt"}}'), policy=Policy.build(Flavor.SELFHOSTED, arguments="off"))[
        0
    ].verdict()
    assert verdict.kind == "invalid_call" and "parse" in verdict.detail
    # Arguments that never closed are a cut call, not an invalid one: the turn ends `length`
    # whatever the upstream said (vllm #47761), which explains it: no retry.
    gate, delivered = gated(call_turn('{"path": "/w/a.txt"'), policy=Policy.build(Flavor.SELFHOSTED, arguments="off"))
    assert gate.verdict() is None and b'"finish_reason":"length"' in b"".join(delivered + gate.open())


def test_schema_violations_only_when_opted_in():
    wrong = '{"file": "/w/a.txt"}'
    assert gated(call_turn(wrong))[0].verdict() is None
    verdict = gated(call_turn(wrong), checks=CHECKS | {"schema"})[0].verdict()
    assert verdict.kind == "schema" and "path" in verdict.detail


def test_truncated_and_errored_turns_are_not_silent():
    length = Stream().chunk({"role": "assistant"}).chunk({"reasoning": "long"}).chunk({}, "length").done().body()
    assert gated(length)[0].verdict() is None
    error = Stream().chunk({"role": "assistant"}).raw(b'data: {"error": {"message": "boom"}}\n\n').done().body()
    assert gated(error)[0].verdict() is None


def test_nothing_checked_means_nothing_held():
    gate, delivered = gated(sglang_empty(), checks=frozenset())
    assert gate.proven and gate.verdict() is None and data(delivered)[-1] == b"[DONE]"


def test_passthrough_tool_streams_prove_the_turn_at_the_first_call():
    policy = Policy.build(Flavor.SELFHOSTED, tool_stream="passthrough")
    gate, delivered = gated(call_turn(READ_ARGS), policy=policy)
    assert gate.proven and data(delivered)[-1] == b"[DONE]"


def test_the_hold_is_bounded():
    repairer = StreamRepairer(FACTS, POLICY)
    gate = TurnGate(FACTS, CHECKS, True, hold_limit=100)
    out = gate.feed(repairer.feed(call_turn(READ_ARGS))) + gate.feed(repairer.end())
    assert gate.proven and data(out)[-1] == b"[DONE]"


def test_completion_bodies_are_judged_the_same_way():
    def body(message, finish="stop"):
        return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}

    assert judge(completion_seen(body({"role": "assistant", "content": ""})), FACTS, CHECKS).kind == "empty"
    only = body({"role": "assistant", "content": None, "reasoning_content": "hmm"})
    assert judge(completion_seen(only), FACTS, CHECKS).kind == "reasoning_only"
    assert judge(completion_seen(body({"role": "assistant", "content": "Hi"})), FACTS, CHECKS) is None
    call = {"id": "x", "type": "function", "function": {"name": "read", "arguments": "{}"}}
    assert judge(completion_seen(body({"content": None, "tool_calls": [call]}, "tool_calls")), FACTS, CHECKS) is None
    schema = judge(completion_seen(body({"content": None, "tool_calls": [call]})), FACTS, CHECKS | {"schema"})
    assert schema.kind == "schema"


# -- continuation -----------------------------------------------------------------------------


def test_a_retry_continues_the_first_response_with_one_role_chunk():
    first = {"id": "chatcmpl-first", "created": 1, "model": "kimi-k2"}
    retry = (
        Stream(rid="chatcmpl-second")
        .chunk({"role": "assistant", "content": "", "reasoning_content": None})
        .chunk({"content": "Hello"})
        .chunk({}, "stop")
        .done()
        .events
    )
    out = Continuation(first, role_delivered=True).rewrite(retry)
    parsed = chunks(out)
    assert [c["id"] for c in parsed] == ["chatcmpl-first", "chatcmpl-first"]
    assert all("role" not in c["choices"][0]["delta"] for c in parsed)
    assert data(out)[-1] == b"[DONE]"
    thought = Stream().chunk({"reasoning": "Again."}).chunk({"reasoning": " More."}).events
    after_reasoning = chunks(Continuation(first, True, reasoning_delivered=True).rewrite(thought))
    assert [c["choices"][0]["delta"]["reasoning"] for c in after_reasoning] == ["\n\nAgain.", " More."]
    fresh = chunks(Continuation(first, role_delivered=False).rewrite(retry))
    assert fresh[0]["choices"][0]["delta"]["role"] == "assistant" and len(fresh) == 3


# -- the simulator's turn faults --------------------------------------------------------------


def sim_post(url, fault, stream, run, task="read /w/a.txt", shape="sglang"):
    body = {
        "model": "kimi-k2-thinking",
        "messages": [{"role": "user", "content": task}],
        "tools": TOOLS,
        "stream": stream,
    }
    headers = {"x-kimi-sim": f"shape={shape}, fault={fault}, run={run}"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=5)


def turn_of(response):
    if response.headers["content-type"].startswith("application/json"):
        return completion_seen(response.json())
    repairer = StreamRepairer(FACTS, POLICY)
    gate = TurnGate(FACTS, CHECKS | {"schema"}, True)
    gate.feed(repairer.feed(response.content))
    gate.feed(repairer.end())
    return gate


@pytest.mark.parametrize(
    ("fault", "shape", "kind"),
    [
        ("empty:2", "sglang", "empty"),
        ("reasoning-only:2", "vllm", "reasoning_only"),
        ("empty-tool-arrays:2", "vllm", "empty"),
        # The call with markup in its arguments (opencode#37297) is not delivered by markup recovery:
        # what is left is a reasoning-only turn (with kimi_markup=keep the gate calls it invalid_call).
        ("invalid-call:2", "vllm", "reasoning_only"),
        ("schema-violation:2", "sglang", "schema"),
    ],
)
def test_turn_faults_fail_the_first_n_attempts_then_answer(fault, shape, kind):
    with SimulatorThread(SimSettings()) as sim:
        for attempt in (1, 2, 3):
            gate = turn_of(sim_post(sim.url, fault, True, "a", shape=shape))
            verdict = gate.verdict()
            if attempt <= 2:
                assert verdict is not None and verdict.kind == kind, (attempt, verdict)
            else:
                assert verdict is None and gate.seen.calls == [("read", '{"path":"/w/a.txt"}')]
        # another run of the same request counts its own attempts
        assert turn_of(sim_post(sim.url, fault, True, "b", shape=shape)).verdict().kind == kind


def test_empty_turns_carry_sglangs_matched_stop_and_non_streamed_tool_arrays_are_correct():
    with SimulatorThread(SimSettings()) as sim:
        streamed = sim_post(sim.url, "empty:1", True, "m", task="hello")
        assert b'"matched_stop":163586' in streamed.content
        plain = sim_post(sim.url, "empty:1", False, "m2", task="hello").json()
        assert plain["choices"][0]["message"]["content"] == "" and plain["choices"][0]["matched_stop"] == 163586
        correct = sim_post(sim.url, "empty-tool-arrays:1", False, "m3", shape="vllm").json()
        assert correct["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "read"


def test_status_refuse_and_stall_first_faults():
    with SimulatorThread(SimSettings(hold=0.5)) as sim:
        assert sim_post(sim.url, "status:503:1", False, "s").status_code == 503
        assert sim_post(sim.url, "status:503:1", False, "s").status_code == 200
        limited = sim_post(sim.url, "status:429:1", True, "s")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "0"
        with pytest.raises(httpx.TransportError):
            sim_post(sim.url, "refuse:1", False, "r")
        assert sim_post(sim.url, "refuse:1", False, "r").status_code == 200
        with pytest.raises(httpx.TransportError):  # role chunk, then the body is left open
            sim_post(sim.url, "stall-first:1", True, "t").read()
        requests = httpx.get(f"{sim.url}/_sim/requests").json()
        assert [r["attempt"] for r in requests if "run=s" in r["settings"]][:2] == [1, 2]
        assert len({r["sha256"] for r in requests if "run=r" in r["settings"]}) == 1


def test_a_stall_after_a_call_started_is_not_a_turn_without_an_answer():
    started = Stream().chunk({"role": "assistant"}).chunk(tool_delta(0, "functions.read:0", "read", '{"pa'))
    assert upstream_started_calls(started.body())
    empty_arrays = Stream().chunk({"role": "assistant"}).chunk({"tool_calls": []})
    assert not upstream_started_calls(empty_arrays.body())
    assert not upstream_started_calls(Stream().chunk({"content": "tool_calls"}).body())


# -- what the client gets when attempts run out -------------------------------------------------

_KINDS = ("empty", "reasoning_only", "invalid_call", "schema", "stall", "connect", "status")


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(_KINDS),
    status=st.sampled_from([None, 429, 500, 502, 503, 504]),
    body=st.sampled_from([b"", b'{"error": {"message": "busy"}}', b'{"choices": []}']),
    fallback=st.booleans(),
    attempts=st.integers(1, 5),
    streamed=st.booleans(),
    delivered=st.sampled_from([b"", b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n']),
)
def test_every_exhausted_retry_gets_one_well_formed_answer(kind, status, body, fallback, attempts, streamed, delivered):
    calls = [b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[]}}]}\n\n', b"data: [DONE]\n\n"]
    failure = Failure(kind, "why", status=status if kind == "status" else None, body=body)
    failure.fallback = calls if fallback and kind in ("invalid_call", "schema") else []
    events = exhausted_events(failure, attempts)
    assert data(events)[-1] == b"[DONE]" and data(events).count(b"[DONE]") == 1
    answer = exhausted_answer(failure, attempts, streamed, delivered, "the upstream")
    assert 200 <= answer.status < 600
    if answer.content_type == "text/event-stream":
        assert streamed and answer.status == 200 and answer.body.startswith(delivered)
        assert data([answer.body])[-1] == b"[DONE]" and data([answer.body]).count(b"[DONE]") == 1
        return
    assert answer.content_type == "application/json"
    parsed = orjson.loads(answer.body)
    if answer.status == 200:  # only calls as they came: never a silent empty success
        assert kind in ("invalid_call", "schema") and answer.body == body
        return
    if kind == "status" and status is not None and body:
        assert answer.status == status and answer.body == body  # the upstream's error, as it came
        return
    assert isinstance(parsed.get("error"), dict) and parsed["error"]["message"], parsed
    expected = {"stall": 504, "status": status}.get(kind, 502)
    assert answer.status == (expected if expected is not None else 502)
    if kind in ("empty", "reasoning_only"):
        assert parsed["error"]["type"] == "upstream_empty_turn"
