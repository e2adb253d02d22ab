"""kimiwire's tnetstring encoder writes, byte for byte, what mitmproxy's own writes."""

from __future__ import annotations

import collections
import enum
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kimiwire.wire.codecs import tnetstring
from mitmproxy.io import tnetstring as mitmproxy_tnetstring


class Level(enum.IntEnum):
    LOW = 1


class Text(str):
    pass


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=700)  # across the length above which bytes are not cached or copied
    | st.text(max_size=150)
    | st.sampled_from(["", "tcp", "127.0.0.1", "timestamp_start", "über"])  # repeated: served from the cache
)
keys = st.text(max_size=20) | st.binary(max_size=20) | st.integers() | st.none() | st.booleans()
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
def test_the_same_bytes_as_mitmproxy(value: object) -> None:
    assert tnetstring.dumps(value) == mitmproxy_tnetstring.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        Level.LOW,
        Text("sub"),
        collections.OrderedDict([("b", 1), ("a", [2, 3])]),
        collections.UserList,  # unserializable: both refuse
        math.inf,
        -0.0,
        math.nan,
        10**40,
        {"nested": {"deeper": [(1, b"x" * 600), {"k": None}]}},
        b"\xff" * 2000,
    ],
)
def test_odd_values_as_mitmproxy(value: object) -> None:
    try:
        expected = mitmproxy_tnetstring.dumps(value)
    except ValueError:
        with pytest.raises(ValueError):
            tnetstring.dumps(value)
        return
    assert tnetstring.dumps(value) == expected


def test_surrogates_are_refused_like_mitmproxy_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        mitmproxy_tnetstring.dumps("\ud800")
    with pytest.raises(UnicodeEncodeError):
        tnetstring.dumps("\ud800")


def test_the_cache_stays_small() -> None:
    for i in range(10_000):
        assert tnetstring.dumps(f"value {i}") == mitmproxy_tnetstring.dumps(f"value {i}")
    for i in range(10_000):
        assert tnetstring.dumps(i + 0.5) == mitmproxy_tnetstring.dumps(i + 0.5)
    assert len(tnetstring._cache) <= tnetstring._CACHE_LIMIT and len(tnetstring._floats) <= tnetstring._CACHE_LIMIT
