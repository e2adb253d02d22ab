"""Tool-call `function.arguments` strings: turning what the model or the harness produced into a
JSON object string. Shared by the request repair (history) and the response repair (new calls)."""

from __future__ import annotations

from dataclasses import dataclass
from json import JSONDecodeError, JSONDecoder
from typing import Any

import orjson

from kimiwire.wire.codecs.json_codec import encode_exact

_DECODER = JSONDecoder()


@dataclass(frozen=True, slots=True)
class ArgumentsFix:
    """`text` is the arguments string to send; `kind` names the repair (None: unchanged)."""

    text: str
    kind: str | None
    value: Any = None  # the decoded object when `text` is a JSON object, else None


# orjson decodes one long string value with a transient peak of about 13x its size; the stdlib
# decoder stays near 1x, which matters more than speed for megabyte-sized arguments.
_LARGE_TEXT = 256 * 1024


def _loads(text: str) -> tuple[bool, Any]:
    try:
        if len(text) > _LARGE_TEXT:
            return True, _DECODER.decode(text)
        return True, orjson.loads(text)
    except (orjson.JSONDecodeError, JSONDecodeError):
        pass
    if not text.isascii() and _has_lone_surrogate(text):  # orjson refuses them; JSON strings allow them
        try:
            return True, _DECODER.decode(text)
        except JSONDecodeError:
            pass
    return False, None


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        if "surrogates" not in str(exc):
            raise  # nesting too deep and the like: the caller keeps the call as it came
        # A lone surrogate (which the exact request decoder reads): kept as its `\uXXXX` escape.
        return encode_exact(value).decode("utf-8")


def _split_leading_object(text: str) -> tuple[dict[str, Any], str] | None:
    """Decode the JSON object at the start of `text`; return it and the rest, else None."""
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return None
    try:
        value, end = _DECODER.raw_decode(stripped)
    except JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    return value, stripped[end:]


def fix_unambiguous(text: Any) -> ArgumentsFix | None:
    """Repairs that cannot change meaning. Returns None when `text` cannot be fixed that way.

    - a JSON object string: unchanged;
    - empty or blank: `{}`;
    - a JSON string holding a JSON object (double-encoded): decoded once;
    - the same object twice in a row (`{..}{..}`): collapsed to one;
    - an object followed by text that is not JSON (trailing garbage): the object.
    """
    if isinstance(text, dict):
        return ArgumentsFix(_dumps(text), "args.not_a_string", text)
    if not isinstance(text, str):
        return None
    if not text.strip():
        return ArgumentsFix("{}", "args.empty", {})
    ok, value = _loads(text)
    if ok:
        if isinstance(value, dict):
            return ArgumentsFix(text, None, value)
        if isinstance(value, str):
            ok2, inner = _loads(value)
            if ok2 and isinstance(inner, dict):
                return ArgumentsFix(value, "args.double_encoded", inner)
        return None
    lead = _split_leading_object(text)
    if lead is None:
        return None
    obj, rest = lead
    rest = rest.strip()
    if not rest:
        return ArgumentsFix(_dumps(obj), "args.trailing_garbage", obj)
    second = _split_leading_object(rest)
    if second is not None:
        obj2, rest2 = second
        if obj2 == obj and not rest2.strip():
            return ArgumentsFix(_dumps(obj), "args.duplicated", obj)
        return None  # two different objects: which one the model meant is a guess
    if rest[0] in '{["' or rest[0].isdigit():
        return None  # looks like more JSON, not garbage
    return ArgumentsFix(_dumps(obj), "args.trailing_garbage", obj)


def fix_history_arguments(text: Any) -> ArgumentsFix:
    """For historical calls in a request: SGLang rejects the whole request when any of them is
    not a JSON object, so what cannot be repaired unambiguously becomes `{}`."""
    fixed = fix_unambiguous(text)
    if fixed is not None:
        return fixed
    return ArgumentsFix("{}", "args.replaced", {})


def unrepaired_arguments(text: Any) -> ArgumentsFix:
    """Arguments forwarded as sent (`kimi_arguments=keep`), decoded only to check the schema."""
    if not isinstance(text, str):
        return ArgumentsFix(_dumps(text), None, text if isinstance(text, dict) else None)
    ok, value = _loads(text) if text.strip() else (False, None)
    return ArgumentsFix(text, None, value if ok and isinstance(value, dict) else None)


def fix_response_arguments(text: Any) -> ArgumentsFix:
    """For calls the model just made: unambiguous repairs, then a JSON-repair library when it
    yields an object; otherwise the text is forwarded as is and reported as invalid."""
    fixed = fix_unambiguous(text)
    if fixed is not None:
        return fixed
    if isinstance(text, str):
        try:
            import json_repair

            repaired = json_repair.loads(text)
        except Exception:  # the library raises on some inputs; that is just "no repair"
            repaired = None
        if isinstance(repaired, dict) and repaired:
            return ArgumentsFix(_dumps(repaired), "args.json_repaired", repaired)
    return ArgumentsFix(text if isinstance(text, str) else _dumps(text), "args.invalid", None)
