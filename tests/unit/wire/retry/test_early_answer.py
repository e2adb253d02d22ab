"""What a late answer that is not an event stream becomes in a stream begun by an early head."""

from __future__ import annotations

import orjson
from kimiwire.wire.codecs.sse import DONE_EVENT
from kimiwire.wire.retry.early_answer import events_for_answer, events_for_error_body

from tests.support.upstream import TEXT_COMPLETION


def data(events: list[bytes]) -> list[object]:
    assert events[-1] == DONE_EVENT
    return [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]


def test_an_openai_style_error_keeps_its_message_type_and_code():
    body = orjson.dumps({"error": {"message": "quota", "type": "insufficient_quota", "code": "quota"}})
    [event] = data(events_for_answer(429, "application/json", body))
    assert event == {"error": {"message": "quota", "type": "insufficient_quota", "code": "quota"}}


def test_an_error_that_is_not_json_is_named_by_its_status_and_text():
    [event] = data(events_for_error_body(502, b"<html>Bad Gateway</html>"))
    assert event["error"]["code"] == 502 and "HTTP 502: <html>Bad Gateway</html>" in event["error"]["message"]


def test_a_whole_completion_becomes_its_events():
    events = data(events_for_answer(200, "application/json", orjson.dumps(TEXT_COMPLETION)))
    deltas = [choice["delta"] for event in events for choice in event["choices"]]
    assert {"content": "hi"} in deltas and events[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_success_that_is_no_completion_is_an_error_not_silence():
    [event] = data(events_for_answer(200, "text/plain", b"ok"))
    assert event["error"]["type"] == "upstream_error" and "not an event stream" in event["error"]["message"]
