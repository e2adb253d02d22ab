import pytest
from kimiwire.wire.stream_endings import EndingLimits, StreamTimes, next_deadline, next_keepalive, parse_seconds

LIMITS = EndingLimits(done_grace=1.0, idle_timeout=120.0, first_byte_timeout=600.0)


def test_before_the_first_event_the_first_byte_budget_applies():
    assert next_deadline(StreamTimes(10.0, 10.0), LIMITS) == (610.0, "first_event")


def test_after_events_the_idle_timeout_counts_from_the_last_one():
    assert next_deadline(StreamTimes(10.0, 50.0, events_seen=True), LIMITS) == (170.0, "idle")


def test_done_wins_and_finished_waits_for_quiet():
    assert next_deadline(StreamTimes(10.0, 50.0, done_at=51.0, finished_at=50.5, events_seen=True), LIMITS) == (
        52.0,
        "done",
    )
    assert next_deadline(StreamTimes(10.0, 53.0, finished_at=50.0, events_seen=True), LIMITS) == (54.0, "finished")


def test_zero_disables():
    limits = EndingLimits(1.0, 0.0, 0.0)
    assert next_deadline(StreamTimes(10.0, 50.0, events_seen=True), limits) is None
    assert next_deadline(StreamTimes(10.0, 10.0), limits) is None


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_option_values_are_checked(value):
    with pytest.raises(ValueError, match="kimi_idle_timeout"):
        parse_seconds(value, "kimi_idle_timeout")


def test_while_a_tool_call_may_be_under_way_its_own_idle_deadline_and_keepalives_apply():
    limits = EndingLimits(done_grace=1.0, idle_timeout=10.0, first_byte_timeout=60.0, tool_idle_timeout=100.0)
    times = StreamTimes(started_at=0.0, last_event_at=5.0, events_seen=True)
    assert next_deadline(times, limits) == (15.0, "idle") and next_keepalive(times, limits) is None
    times.tool_section_open = True
    assert next_deadline(times, limits) == (105.0, "idle")
    assert next_keepalive(times, limits) == 5.0 + limits.tool_keepalive
    times.keepalive_at = 12.0
    assert next_keepalive(times, limits) == 12.0 + limits.tool_keepalive
    times.finished_at = 20.0
    assert next_keepalive(times, limits) is None
