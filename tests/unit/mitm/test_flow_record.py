"""The typed flow record writes what captures, scripts and tests read from `flow.metadata["kimiwire"]`,
and a retry's outcome names the flow's ending as the record keeps it."""

from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.flow_endings import CUT_SHORT, FlowEnding, kind_of
from kimiwire.mitm.flow_notes import gave_up, retry_words
from kimiwire.mitm.flow_record import METADATA_KEY, FlowRecord
from kimiwire.mitm.retry_hooks import ANSWERED, CLIENT_LEFT, RETRY_FAILED, RetryOutcome
from kimiwire.wire.retry.outcome import Failure
from mitmproxy.test import tflow


def test_writes_land_in_the_metadata_dict_readers_use():
    flow = tflow.tflow()
    record = FlowRecord.of(flow)
    record.start_chat({"idle_timeout": 1.0}, {"flavor": "selfhosted"}, None, {"stream": True})
    record.add_note("a note")
    record.add_error("an error")
    record.add_flag("replay_without_credentials")
    record.set_error_answer(504)
    stored = flow.metadata[METADATA_KEY]
    assert stored is record.data and FlowRecord.of(flow).data is stored
    assert stored["notes"] == ["a note"] and stored["errors"] == ["an error"]
    assert stored["flags"] == ["replay_without_credentials"] and stored["error_answer"] == 504
    assert "detection" not in stored and record.is_chat and record.answered_with == 504


def test_the_first_ending_wins_and_a_retry_replaces_it():
    record = FlowRecord.of(tflow.tflow())
    assert record.set_ending(FlowEnding.FIRST_BYTE_TIMEOUT)
    assert not record.set_ending(FlowEnding.UPSTREAM_ERROR)
    assert record.ended(FlowEnding.FIRST_BYTE_TIMEOUT, FlowEnding.IDLE_TIMEOUT)
    assert record.replace_ending(RetryOutcome.after(Failure("stall", "no event")).ending) == "first_byte_timeout"
    assert record.ending == "retries_exhausted:stall" and kind_of(record.ending) == FlowEnding.RETRIES_EXHAUSTED
    assert gave_up(record.data) and record.settle_ending(natural=True) == "retries_exhausted:stall"


def test_a_flow_nothing_ended_settles_natural_or_error():
    assert FlowRecord.of(tflow.tflow()).settle_ending(natural=True) == "natural"
    assert FlowRecord.of(tflow.tflow()).settle_ending(natural=False) == "error"


def test_retry_outcomes_name_the_endings_the_record_keeps():
    assert RetryOutcome.after(None) is ANSWERED and ANSWERED.ending == "retried"
    assert CLIENT_LEFT.ending == "client_disconnected" and kind_of(CLIENT_LEFT.ending) in CUT_SHORT
    assert RETRY_FAILED.ending == "retries_exhausted:error"
    assert RetryOutcome.after(Failure("empty", "no content")).ending == "retries_exhausted:empty"


def test_attempts_and_answer_repairs_are_read_by_the_flow_notes():
    record = FlowRecord.of(tflow.tflow())
    record.first_attempt({"attempt": 1, "why": "first"})
    record.attempts().append({"attempt": 2, "why": "empty"})
    record.add_answer_repairs([{"kind": "ids.call"}], attempt=2)
    assert record.attempted and record.attempts_made == 2
    assert record.repairs == [{"kind": "ids.call", "phase": "response", "attempt": 2}]
    record.replace_ending(ANSWERED.ending)
    assert retry_words(record.data) == ["retried=1", "why=empty"]


def test_the_recorder_writes_a_typed_ending_with_its_detail_and_marks_a_cut_short_one():
    kw = KimiWire()
    closed = kw.flows.start(tflow.tflow())
    kw.recorder.ending(closed, FlowEnding.CLOSED, "mitmproxy internals not usable")
    kw.recorder.ending(closed, FlowEnding.UPSTREAM_ERROR)  # the first ending wins
    assert closed.record.ending == "closed:mitmproxy internals not usable"
    assert closed.flow.marked and closed.flow.comment == "kimiwire: ended=closed"
    natural = kw.flows.start(tflow.tflow())
    kw.recorder.ending(natural, FlowEnding.NATURAL)
    assert natural.record.ending == "natural" and not natural.flow.marked and not natural.flow.comment
