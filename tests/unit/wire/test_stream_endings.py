import pytest
from kimiwire.wire.stream_endings import EndingLimits, StreamTimes, next_deadline, next_keepalive, parse_seconds

LIMITS = EndingLimits(done_grace=1.0, idle_timeout=120.0, first_byte_timeout=600.0)


def test_before_the_first_event_its_own_timeout_applies_from_the_request():
    assert next_deadline(StreamTimes(10.0, 10.0), LIMITS) == (10.0 + LIMITS.first_event_timeout, "first_event")
    assert next_deadline(StreamTimes(10.0, 10.0), EndingLimits(first_event_timeout=0.0, idle_timeout=5.0)) == (
        15.0,
        "idle",
    )


def test_the_defaults_keep_their_order_and_scale_together():
    limits = EndingLimits()
    assert limits.first_byte_timeout < limits.first_event_timeout  # headers come before the first event
    assert limits.keepalive < limits.idle_timeout
    scaled = limits.scaled(0.01)
    assert scaled.as_dict() == {k: v * 0.01 for k, v in limits.as_dict().items()}


def test_comments_are_due_only_while_the_client_waits():
    limits = EndingLimits(keepalive=10.0)
    assert next_keepalive(StreamTimes(10.0, 10.0), limits, waiting=True) == 20.0
    assert next_keepalive(StreamTimes(10.0, 10.0, keepalive_at=25.0), limits, waiting=True) == 35.0
    assert next_keepalive(StreamTimes(10.0, 40.0, events_seen=True), limits, waiting=True) == 50.0
    assert next_keepalive(StreamTimes(10.0, 10.0), limits, waiting=False) is None
    assert next_keepalive(StreamTimes(10.0, 10.0, done_at=12.0), limits, waiting=True) is None
    assert next_keepalive(StreamTimes(10.0, 10.0), EndingLimits(keepalive=0.0), waiting=True) is None


def test_after_events_the_idle_timeout_counts_from_the_last_one():
    assert next_deadline(StreamTimes(10.0, 50.0, events_seen=True), LIMITS) == (170.0, "idle")


def test_done_wins_and_finished_waits_for_quiet():
    assert next_deadline(StreamTimes(10.0, 50.0, done_at=51.0, finished_at=50.5, events_seen=True), LIMITS) == (
        52.0,
        "done",
    )
    assert next_deadline(StreamTimes(10.0, 53.0, finished_at=50.0, events_seen=True), LIMITS) == (54.0, "finished")


def test_zero_disables():
    limits = EndingLimits(1.0, 0.0, 0.0, 0.0)
    assert next_deadline(StreamTimes(10.0, 50.0, events_seen=True), limits) is None
    assert next_deadline(StreamTimes(10.0, 10.0), limits) is None


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_option_values_are_checked(value):
    with pytest.raises(ValueError, match="kimi_idle_timeout"):
        parse_seconds(value, "kimi_idle_timeout")


def test_while_a_tool_call_may_be_under_way_its_own_idle_deadline_and_keepalives_apply():
    limits = EndingLimits(done_grace=1.0, idle_timeout=10.0, first_byte_timeout=60.0, tool_idle_timeout=100.0)
    times = StreamTimes(started_at=0.0, last_event_at=5.0, events_seen=True)
    assert next_deadline(times, limits) == (15.0, "idle") and next_keepalive(times, limits, waiting=False) is None
    times.tool_section_open = True
    assert next_deadline(times, limits) == (105.0, "idle")
    assert next_keepalive(times, limits, waiting=False) == 5.0 + limits.keepalive
    times.keepalive_at = 12.0
    assert next_keepalive(times, limits, waiting=False) == 12.0 + limits.keepalive
    times.finished_at = 20.0
    assert next_keepalive(times, limits, waiting=False) is None
