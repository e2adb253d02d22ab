"""Redaction answers computed elsewhere (a worker process) and used by the capture in their place."""

import orjson
from kimiwire.wire.capture.redaction import REDACTED, KnownRedactions, Redactor, redacted_bodies


def test_redacted_bodies_answers_none_where_nothing_is_secret():
    secret = b'{"messages": [], "api_key": "sk-1"}'
    plain = b'{"messages": [], "max_tokens": 5}'
    answers = redacted_bodies(Redactor(), [secret, plain, b"not json"])
    assert answers[1:] == [None, None]
    assert orjson.loads(answers[0]) == {"messages": [], "api_key": REDACTED}


def test_known_answers_are_used_for_those_very_bodies_and_others_are_redacted_as_always():
    redactor = Redactor(["x-team"])
    known_body = b'{"api_key": "sk-1"}'
    elsewhere = b'{"api_key": "[from the worker]"}'  # not what this redactor would make: proves it is not redone
    known = KnownRedactions(redactor, [known_body], [elsewhere])
    assert known.json_body(known_body) == elsewhere
    equal_copy = bytes(bytearray(known_body))  # the same bytes, another object: redacted here
    assert equal_copy is not known_body and orjson.loads(known.json_body(equal_copy)) == {"api_key": REDACTED}
    assert orjson.loads(known.json_body(b'{"x-team": "t"}')) == {"x-team": REDACTED}  # the user's names kept
    unchanged = b'{"a": 1}'
    assert KnownRedactions(redactor, [unchanged], [None]).json_body(unchanged) is unchanged
