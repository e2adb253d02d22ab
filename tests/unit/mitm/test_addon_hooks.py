"""The adapter's hooks, driven with mitmproxy's own test helpers (no sockets)."""

import gc
import weakref

import orjson
import pytest
from kimiwire.mitm import addon as addon_module
from kimiwire.mitm import request_side
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.capture import delivered_body
from kimiwire.mitm.stream_callable import ProxyEnd
from kimiwire.wire.response.choice_calls import ChoiceCalls
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from tests.support import streams
from tests.support.conversations import TOOLS, assistant, body, call, tool, user
from tests.support.piai_model import piai_parse
from tests.support.streams import EXEC_ARGS, READ_ARGS

TWO = [("read", READ_ARGS), ("exec", EXEC_ARGS)]
REQUEST = orjson.dumps(body([user(), assistant(call("functionsread0", "read")), tool("functionsread0")]))


def chat_flow(content: bytes = REQUEST, live: bool = True):
    req = tutils.treq(
        method=b"POST",
        path=b"/v1/chat/completions",
        content=content,
        headers=http.Headers(content_type="application/json"),
    )
    flow = tflow.tflow(req=req)
    flow.live = live
    return flow


def sse_response(content=None):
    return tutils.tresp(
        headers=http.Headers(content_type="text/event-stream", transfer_encoding="chunked"), content=content
    )


def test_request_hook_repairs_and_records():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        sent = orjson.loads(flow.request.content)
        assert sent["messages"][1]["tool_calls"][0]["id"] == "functions.read:0"
        assert flow.marked == ":wrench:" and "ids.call=1" in flow.comment
        assert kw.counts["ids.call"] == 1


@pytest.fixture
def request_repair_raises(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(request_side, "repair_request_body", boom)


@pytest.mark.usefixtures("request_repair_raises")
def test_exception_in_request_repair_passes_the_flow_through():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        assert flow.request.content == REQUEST
        assert flow.marked == ":warning:"
        assert "RuntimeError: bug" in flow.metadata["kimiwire"]["errors"][0]


def test_loaded_flows_are_not_repaired_again():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow(live=False)
        kw.request(flow)
        assert flow.request.content == REQUEST
        assert "kimiwire" not in flow.metadata


def run_stream(kw, flow, upstream: bytes, step: int = 9) -> bytes:
    kw.responseheaders(flow)
    callable_ = flow.response.stream
    out = []
    for i in range(0, len(upstream), step):
        result = callable_(upstream[i : i + step])
        assert result != b"" and all(result)
        out += result
    out += callable_(b"")
    kw.response(flow)
    return b"".join(out)


def test_stream_callable_repairs_and_keeps_both_copies():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        flow.response = sse_response()
        upstream = streams.interleaved(TWO).body()
        delivered = run_stream(kw, flow, upstream)
        assert [c[1] for c in piai_parse(delivered)["calls"]] == ["read", "exec"]
        assert flow.response.content == upstream
        assert delivered_body(flow) == delivered
        assert "content-length" not in flow.response.headers


def test_exception_mid_stream_loses_nothing(monkeypatch):
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        flow.response = sse_response()
        upstream = streams.sglang([("read", READ_ARGS)]).body()
        kw.responseheaders(flow)
        original = ChoiceCalls.absorb
        calls = {"n": 0}

        def flaky(choice, deltas):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("repair bug")
            return original(choice, deltas)

        monkeypatch.setattr(ChoiceCalls, "absorb", flaky)
        out = []
        for i in range(0, len(upstream), 50):
            out += flow.response.stream(upstream[i : i + 50])
        out += flow.response.stream(b"")
        kw.response(flow)
        parsed = piai_parse(b"".join(out))
        # the held fragments went out unrepaired, then the raw rest: the full arguments arrive
        assert [c[1:] for c in parsed["calls"]] == [("read", orjson.loads(READ_ARGS))]
        assert flow.marked == ":warning:"
        assert any("repair bug" in e for e in flow.metadata["kimiwire"]["errors"])


def test_whole_body_response_is_repaired_when_the_callable_never_ran():
    # What server replay does: it sets the response at once, the callable sees nothing.
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        flow.response = sse_response(streams.interleaved(TWO).body())
        kw.responseheaders(flow)
        kw.response(flow)
        assert [c[1] for c in piai_parse(flow.response.content)["calls"]] == ["read", "exec"]


def test_non_chat_event_streams_are_streamed_untouched():
    kw = KimiWire()
    with taddons.context(kw):
        flow = tflow.tflow(resp=sse_response())
        kw.responseheaders(flow)
        assert flow.response.stream is True


@pytest.mark.parametrize("option,value", [("kimi_reasoning", "sometimes"), ("kimi_tool_stream", "bits")])
def test_bad_option_values_are_rejected(option, value):
    from mitmproxy import exceptions

    kw = KimiWire()
    with taddons.context(kw) as tctx, pytest.raises(exceptions.OptionsError, match=option):
        tctx.configure(kw, **{option: value})


def test_tools_declared_reach_the_response_repair():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        assert set(flow.metadata["kimiwire"]["facts"]["tools"]) == {t["function"]["name"] for t in TOOLS}


@pytest.mark.usefixtures("request_repair_raises")
def test_a_request_whose_repair_raises_still_gets_a_watched_stream():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        assert flow.request.headers["accept-encoding"] == "identity"
        flow.response = sse_response()
        upstream = streams.text_answer().body()
        delivered = run_stream(kw, flow, upstream)
        assert delivered.endswith(b"data: [DONE]\n\n")
        record = flow.metadata["kimiwire"]
        assert record["ending"] == "natural" and record["stream"]["events_in"] > 0


def test_a_proxy_ending_is_decided_by_the_stream_and_marks_the_flow():
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow(orjson.dumps(body([user()])))
        kw.request(flow)
        flow.response = sse_response()
        kw.responseheaders(flow)
        stream = flow.response.stream.__self__
        for event in streams.text_answer().events[:5]:  # the answer has begun: a stall now is not retried
            stream(event)
        stream.end_by_proxy(ProxyEnd.IDLE)
        tail = b"".join(stream(b""))
        kw.response(flow)
        assert b"upstream_idle_timeout" in tail and tail.endswith(b"data: [DONE]\n\n")
        assert flow.metadata["kimiwire"]["ending"] == "idle_timeout"
        assert flow.marked and "ended=idle_timeout" in flow.comment


def test_a_replayed_empty_turn_is_made_explicit_not_silent():
    # Server replay of an empty turn: there is no upstream to ask again, the client is told.
    kw = KimiWire()
    with taddons.context(kw):
        flow = chat_flow()
        kw.request(flow)
        empty = streams.Stream().chunk({"role": "assistant", "content": ""}).chunk({}, "stop").done().body()
        flow.response = sse_response(empty)
        kw.responseheaders(flow)
        assert kw.response(flow) is None
        events = [line for line in flow.response.content.split(b"\n\n") if line]
        assert b"upstream_empty_turn" in events[-2] and events[-1] == b"data: [DONE]"


@pytest.mark.parametrize(
    "option,value",
    [
        ("kimi_retry_on", "empty,sometimes"),
        ("kimi_retry_budget", "soon"),
        ("kimi_retries", -1),
        ("kimi_fallback_upstream", "ftp://example"),
        ("kimi_fallback_flavor", "nonesuch"),
    ],
)
def test_bad_retry_options_are_rejected(option, value):
    from mitmproxy import exceptions

    kw = KimiWire()
    with taddons.context(kw) as tctx, pytest.raises(exceptions.OptionsError, match=option):
        tctx.configure(kw, **{option: value})


@pytest.mark.parametrize(
    "option,value",
    [
        ("kimi_timeout_scale", "0"),
        ("kimi_timeout_scale", "fast"),
        ("kimi_first_event_timeout", "-1"),
        ("kimi_hedge_after", "soon"),
    ],
)
def test_bad_timing_options_are_rejected(option, value):
    from mitmproxy import exceptions

    kw = KimiWire()
    with taddons.context(kw) as tctx, pytest.raises(exceptions.OptionsError, match=option):
        tctx.configure(kw, **{option: value})


def test_one_factor_scales_every_time_limit():
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        default_limits, default_policy = kw.limits, kw.retrier.policy
        tctx.configure(kw, kimi_timeout_scale="0.1")
        assert kw.limits.as_dict() == pytest.approx({k: v * 0.1 for k, v in default_limits.as_dict().items()})
        assert kw.retrier.limits is kw.limits
        assert kw.retrier.policy.budget == pytest.approx(default_policy.budget * 0.1)
        assert kw.retrier.policy.backoff == pytest.approx(default_policy.backoff * 0.1)
        tctx.configure(kw, kimi_hedge_after="30")
        assert kw.hedge_after == pytest.approx(3.0)
        tctx.configure(kw, kimi_idle_timeout="30")  # an option set later keeps the factor
        assert kw.limits.idle_timeout == pytest.approx(3.0)


def test_running_freezes_the_startup_heap_unless_switched_off(monkeypatch):
    frozen = []
    monkeypatch.setattr(addon_module, "freeze_startup_heap", lambda: frozen.append(True))
    monkeypatch.setattr(addon_module.proxy_internals, "install_error_answers", lambda: True)
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_gc_freeze=False, kimi_capture_dir="", kimi_retries=0, kimi_lazy_connect=False)
        kw.running()
        assert frozen == []
        tctx.configure(kw, kimi_gc_freeze=True)
        kw.running()
        assert frozen == [True]


def test_a_frozen_heap_still_frees_what_becomes_garbage_after_a_reload():
    class Cycle:
        pass

    before = gc.get_freeze_count()
    try:
        alive = Cycle()
        alive.itself = alive
        alive_ref = weakref.ref(alive)
        addon_module.freeze_startup_heap()
        assert gc.get_freeze_count() > 1000
        del alive  # garbage now, but frozen: a plain collection leaves it
        gc.collect()
        assert alive_ref() is not None
        addon_module.freeze_startup_heap()  # what a script reload runs again
        assert alive_ref() is None
        later = Cycle()
        later.itself = later
        later_ref = weakref.ref(later)
        del later
        gc.collect()
        assert later_ref() is None  # objects made after the freeze are collected as usual
    finally:
        gc.unfreeze()
        assert before == 0 or gc.get_freeze_count() == 0
