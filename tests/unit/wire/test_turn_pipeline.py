"""The turn pipeline (wire/response/turn_pipeline.py): repair, gate, continuation in one place,
the gate reading the chunks the repairer parsed instead of parsing its output again."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.turn_pipeline import TurnPipeline
from kimiwire.wire.retry.continuation import Continuation
from kimiwire.wire.retry.failure_kinds import TURN_CHECKS
from kimiwire.wire.retry.turn_gate import TurnGate

from tests.unit.wire.test_fast_path import FIRST, GATE_STREAMS, NO_SPLIT, NO_TOOLS, POLICY, TOOLS, event

CHECKS = frozenset(TURN_CHECKS)


class ParsingGate(TurnGate):
    """The gate as it was: every event the repairer emits parsed again."""

    def feed(self, events: list[bytes], parsed: Any = None) -> list[bytes]:
        return super().feed(events)


def run(events: list[bytes], gate_type: type[TurnGate], policy=POLICY, facts=NO_TOOLS, fast=True) -> tuple:
    repairer = StreamRepairer(facts, policy)
    repairer.fast_path = fast
    gate = gate_type(facts, CHECKS, True)
    pipeline = TurnPipeline(repairer, gate)
    out = [b"".join(pipeline.feed(piece)) for piece in events]
    out.append(b"".join(pipeline.end()))
    out.append(b"".join(pipeline.discard()))
    return out, gate.seen, gate.proven, gate.role_delivered, pipeline.verdict, gate.template


@settings(max_examples=300, deadline=None)
@given(FIRST, GATE_STREAMS, st.sampled_from([POLICY, NO_SPLIT]), st.sampled_from([NO_TOOLS, TOOLS]), st.booleans())
def test_the_gate_judges_handed_over_chunks_as_it_judges_parsed_bytes(first, events, policy, facts, fast):
    events = [*first, *events]
    assert run(events, TurnGate, policy, facts, fast) == run(events, ParsingGate, policy, facts, fast)


def test_the_gate_parses_none_of_the_repairers_json_events(monkeypatch):
    parsed: list[bytes] = []
    inspect = TurnGate._inspect

    def watched(self: TurnGate, raw: bytes) -> tuple[bool, bool, bool]:
        parsed.append(raw)
        return inspect(self, raw)

    monkeypatch.setattr(TurnGate, "_inspect", watched)
    events = [event({"role": "assistant", "content": ""}), event({"reasoning_content": "<think>hm"})]
    events += [event({"content": "\n"}), event({}, "stop"), b"data: [DONE]\n\n"]
    _, _, proven, _, verdict, _ = run(events, TurnGate, fast=False)
    assert verdict is not None and verdict.kind == "reasoning_only" and not proven
    assert parsed == [b"data: [DONE]\n\n"]  # only the end marker goes through the gate's own decoder


def test_a_retry_pipeline_continues_what_it_delivers():
    """The continuation is the pipeline's last stage: the retry's chunk id and role become the
    first attempt's."""
    continuation = Continuation({"id": "first"}, role_delivered=True)
    pipeline = TurnPipeline(StreamRepairer(NO_TOOLS, POLICY), TurnGate(NO_TOOLS, CHECKS, True), continuation)
    out = pipeline.feed(event({"role": "assistant", "content": ""}) + event({"content": "Answer"}))
    out += pipeline.end()
    assert pipeline.verdict is None
    body = b"".join(out)
    assert b'"id":"first"' in body and b"chatcmpl-1" not in body and b'"role"' not in body
    assert body.endswith(b"data: [DONE]\n\n")


def test_an_exception_in_a_stage_costs_the_repair_never_data(monkeypatch):
    repairer = StreamRepairer(TOOLS, POLICY)
    pipeline = TurnPipeline(repairer, TurnGate(TOOLS, CHECKS, True))
    pipeline.feed(event({"role": "assistant", "content": ""}))
    monkeypatch.setattr(repairer, "feed", lambda data: 1 / 0)
    partial = event({"content": "cut"})[:20]
    assert b"".join(pipeline.feed(partial)) == partial
    assert pipeline.failed and isinstance(pipeline.failure, ZeroDivisionError)
    assert pipeline.feed(b"rest") == [b"rest"]


def test_the_ending_the_repairer_makes_is_handed_over_too(monkeypatch):
    """A stream cut without finish_reason or [DONE]: the finish chunk the repairer makes at the end
    reaches the gate as the chunk it encoded, not as bytes to parse again."""
    parsed: list[bytes] = []
    inspect = TurnGate._inspect

    def watched(self: TurnGate, raw: bytes) -> tuple[bool, bool, bool]:
        parsed.append(raw)
        return inspect(self, raw)

    monkeypatch.setattr(TurnGate, "_inspect", watched)
    out, seen, proven, _, verdict, _ = run(
        [event({"role": "assistant", "content": ""}), event({"reasoning_content": "hm"})], TurnGate
    )
    assert b'"finish_reason":"stop"' in out[-2] + out[-1]  # made at the end, held by the gate
    assert not proven and seen.finish_reasons == ["stop"] and verdict is not None and verdict.kind == "reasoning_only"
    assert parsed == [b"data: [DONE]\n\n"]


def test_without_a_gate_to_judge_the_repairer_hands_nothing_over(monkeypatch):
    """No gate, or a turn already proven: reads and the end go through plain `feed` and `end`,
    the fast path keeps no texts."""

    def refused(*_: object) -> None:
        raise AssertionError("handed over with nothing to judge")

    monkeypatch.setattr(StreamRepairer, "feed_handing_over", refused)
    monkeypatch.setattr(StreamRepairer, "end_handing_over", refused)
    events = [event({"role": "assistant", "content": ""}), event({"content": "Answer"}), event({"content": " more"})]
    events += [event({"content": " and more"}), event({}, "stop"), b"data: [DONE]\n\n"]
    ungated = TurnPipeline(StreamRepairer(NO_TOOLS, POLICY))
    body = b"".join(b"".join(ungated.feed(piece)) for piece in events) + b"".join(ungated.end())
    assert body == b"".join(events) and ungated.repairer.handing_over is None
    gate = TurnGate(NO_TOOLS, CHECKS, True)
    gate.open()
    proven = TurnPipeline(StreamRepairer(NO_TOOLS, POLICY), gate)
    assert b"".join(b"".join(proven.feed(piece)) for piece in events) + b"".join(proven.end()) == body
