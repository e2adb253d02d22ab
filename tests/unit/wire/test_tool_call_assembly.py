"""The tool-call state machine on its own: closed-argument scanning and bounded work."""

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response import tool_call_assembly
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.tool_call_assembly import ArgumentsScanner, arguments_closed
from kimiwire.wire.servers.policy import Flavor, Policy

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\{}[]:, é\n'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k"\\{}', max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4), st.data())
def test_a_json_object_is_closed_only_at_its_end_whatever_the_pieces(value, data):
    text = json.dumps(value, ensure_ascii=data.draw(st.booleans()))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    scanner = ArgumentsScanner()
    for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
        scanner.feed(text[a:b])
        # a strict prefix of an object is never closed; the whole object is
        assert scanner.closed == (b == len(text))


@pytest.mark.parametrize(
    "text,closed",
    [
        ('{"a": 1}', True),
        ('{"a": 1}  \n', True),
        ('"{\\"a\\": 1}"', True),  # double-encoded: one closed JSON string
        ('{"a": "}', False),
        ('{"a": "\\"}', False),
        ('{"a": 1}}', True),  # the object closed; what follows is for the argument repair
        ('{"a": 1} x', True),
        ('}{"a": 1}', False),
        ("5", False),
        ("", False),
        ("  ", False),
        ({"a": 1}, True),
    ],
)
def test_arguments_closed(text, closed):
    assert arguments_closed(text) is closed


def test_never_closing_calls_cost_linear_work(monkeypatch):
    """N calls whose arguments never close: each new call may look at earlier calls, but only at
    fragments it has not seen, so the scanning work is bounded by the bytes received."""
    scanned = {"chars": 0, "feeds": 0}
    original = ArgumentsScanner.feed

    def counting(self, text):
        scanned["chars"] += len(text)
        scanned["feeds"] += 1
        return original(self, text)

    monkeypatch.setattr(tool_call_assembly.ArgumentsScanner, "feed", counting)
    repairer = StreamRepairer(RequestFacts(0, {}, False, True), Policy.build(Flavor.SELFHOSTED))
    n = 2000
    fragment = '{"command": "rm -rf /w/'
    for i in range(n):
        delta = {"tool_calls": [{"index": i, "id": f"c{i}", "type": "function", "function": {"name": "exec"}}]}
        repairer.feed(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n")
        delta = {"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}
        repairer.feed(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n")
    repairer.end()
    assert scanned["feeds"] <= 2 * n
    assert scanned["chars"] <= 2 * n * len(fragment)
