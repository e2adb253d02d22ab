"""A JSON body's secrets are redacted at any depth, and a body without any comes back as the same
bytes: the redactor's walk against a plain recursive one, over random documents."""

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.capture.redaction import REDACTED, Redactor

SECRET_LOOKING = ["api_key", "apiKey", "password", "x-team", "auth", "sessionid", "prompt_cache_key"]
NAMES = st.sampled_from([*SECRET_LOOKING, "max_tokens", "content", "role"]) | st.text(max_size=8)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6) | st.just(REDACTED),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=30,
)


def reference(redactor: Redactor, node: Any) -> Any:
    """Every text under a secret name replaced; objects and arrays under one searched, not replaced."""
    if isinstance(node, dict):
        return {
            key: REDACTED if isinstance(value, str) and redactor.is_secret(key) else reference(redactor, value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [reference(redactor, item) for item in node]
    return node


@settings(max_examples=400, deadline=None)
@given(document=st.dictionaries(NAMES, VALUES, max_size=5) | st.lists(VALUES, max_size=4))
def test_the_walk_redacts_what_a_plain_recursive_one_does(document: Any) -> None:
    redactor = Redactor(["x-team"])
    body = orjson.dumps(document)
    expected = reference(redactor, document)
    redacted = redactor.json_body(body)
    if expected == document:
        assert redacted is body  # nothing secret: the very bytes
    else:
        assert orjson.loads(redacted) == expected
