"""JSON bodies in and out without losing what JSON allows.

orjson decodes and encodes the common case. It refuses some valid JSON (a lone surrogate escape
such as `"\\ud83d"`, which Node's `JSON.stringify` writes for an emoji cut by `.slice()`; a float
literal beyond the double range) and it turns an integer beyond 64 bits into a float without an
error. Such bodies go through the standard library's decoder instead, which keeps integers exact
and lone surrogates as they are, and its encoder writes them back unchanged: the integer's digits,
the surrogate as the same `\\uXXXX` escape, `NaN`/`Infinity` as the client wrote them. Anything
neither decoder accepts (invalid UTF-8, a byte-order mark, plain garbage) is not JSON.
"""

from __future__ import annotations

import codecs
import gc
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

# orjson reads integers from i64 min to u64 max exactly and any integer past them as a float; a
# float of that size in what it returned may be such an integer, so the exact decoder reads it again.
_INTEGER_RANGE_EDGE = float(2**63)
_SURROGATE_ESCAPES = "kimiwire.json_surrogate_escapes"
_referents = gc.get_referents


class NotJSON(ValueError):
    """The body is not a JSON text either decoder accepts."""


@dataclass(frozen=True, slots=True)
class Decoded:
    value: Any
    fallback: str | None = None  # why the standard library decoded it, when it did

    def encode(self, value: Any) -> bytes:
        """`value` (this document, possibly repaired) encoded the way it was decoded."""
        return encode_exact(value) if self.fallback else orjson.dumps(value)


def _escape_surrogates(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    chars = error.object[error.start : error.end]
    return "".join(f"\\u{ord(c):04x}" for c in chars), error.end


codecs.register_error(_SURROGATE_ESCAPES, _escape_surrogates)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e400 would come back as Infinity: a change, not a repair
        raise NotJSON(f"number {literal[:40]} does not fit a double")
    return value


_EXACT_DECODER = json.JSONDecoder(parse_float=_finite_float)


def _may_hold_a_lost_integer(value: Any) -> bool:
    """Whether what orjson returned holds a float of 2**63 or more. The document is read a level at
    a time by `gc.get_referents` (a dict's values, a list's items, nothing of a string or number),
    and a level is looked at in Python only when it holds a float: no Python step per string, and
    strings are most of a request's leaves. Only for decoder output (dicts, lists, scalars)."""
    level = [value]
    while level:
        if float in set(map(type, level)):
            for item in level:
                if type(item) is float and abs(item) >= _INTEGER_RANGE_EDGE:
                    return True
        level = _referents(*level)
    return False


def decode(raw: bytes) -> Decoded:
    """Raises NotJSON when neither decoder accepts `raw`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        why = f"orjson refused it ({exc})"
    else:
        if not _may_hold_a_lost_integer(value):
            return Decoded(value)
        why = "orjson read a number of 2**63 or more, maybe an integer, as a float"
    try:
        text = raw.decode("utf-8")  # strict: JSON text is UTF-8 (RFC 8259, section 8.1)
        return Decoded(_EXACT_DECODER.decode(text), why)
    except NotJSON:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NotJSON(f"{why}; the exact decoder too ({exc})") from exc


def encode_exact(value: Any) -> bytes:
    """What `decode`'s fallback read, written back: compact, UTF-8, integers exact, lone
    surrogates as `\\uXXXX` escapes, NaN and Infinity as the literals they were read from."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    return text.encode("utf-8", _SURROGATE_ESCAPES)


def storable(value: Any) -> Any:
    """`value` with each lone surrogate spelled as its `\\uXXXX` escape text, for stores that need
    valid UTF-8 (mitmproxy's flow files: the repair records and facts kept on a flow). Only what the
    exact decoder read can hold lone surrogates."""
    try:
        return _storable(value)
    except RecursionError:
        return "(nested too deeply to keep)"


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", _SURROGATE_ESCAPES).decode("utf-8")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value
