"""Each recorded repair said in words a user knows: which call or message it touched and what
changed (sans-IO; used by the mitmweb views). A repair whose record says nothing changed gets its
meaning instead of `null -> null`; a kind without words here is shown as `before -> after`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

# Response repairs record the call's position in the turn; request repairs the message's index.
_REQUEST_PLACE = "message"
_RESPONSE_PLACE = "call"


def short(value: Any, limit: int = 120) -> str:
    """A value on one line: text as it is, anything else as JSON, cut with … past `limit`."""
    if value is None:
        text = "null"
    elif isinstance(value, str):
        text = value
    else:
        text = orjson.dumps(value, default=str).decode()
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: Any) -> str:
    """A value that may be empty, said so."""
    if value in (None, "", [], {}):
        return "(empty)" if value != {} else "{}"
    return short(value)


def _joined(before: Any, after: Any) -> str:
    return f"its {before} argument deltas joined; sent as 2 deltas: the call's name and id, then the whole arguments"


def _arguments(what: str) -> Callable[[Any, Any], str]:
    return lambda before, after: f"arguments {what}: {_shown(before)} -> {_shown(after)}"


def _ids(what: str) -> Callable[[Any, Any], str]:
    return lambda before, after: f"{what} id {_shown(before)} -> {_shown(after)}"


def _recovered(form: str) -> Callable[[Any, Any], str]:
    return lambda before, after: (
        f"call {short(after)} recovered from Kimi tool-call markup leaked into {short(before)} ({form}); "
        f"the markup was removed from the text"
    )


WORDS: dict[str, Callable[[Any, Any], str]] = {
    "stream.tool_call_joined": _joined,
    "args.empty": _arguments("were empty, sent as an empty object"),
    "args.truncated": lambda before, after: f"{short(before)}'s arguments were cut off: {_shown(after)}",
    "args.not_a_string": _arguments("were not a JSON string, sent as one"),
    "args.double_encoded": _arguments("were JSON inside a JSON string, decoded once"),
    "args.trailing_garbage": _arguments("had text after the JSON object, removed"),
    "args.duplicated": _arguments("held the object twice, sent once"),
    "args.replaced": _arguments("could not be read, replaced by an empty object"),
    "args.json_repaired": _arguments("were broken JSON, repaired"),
    "args.invalid": _arguments("are not a JSON object"),
    "args.schema_violation": _arguments("break the declared schema"),
    "markup.in_arguments": lambda before, after: (
        f"Kimi tool-call markup inside the arguments ({short(before, 80)}) replaced by the call(s) it held: "
        f"{short(after)}"
    ),
    "markup.in_arguments_incomplete": lambda before, after: (
        f"cut-off markup inside the arguments of {short(before)}: {short(after, 80)}"
    ),
    "markup.recovered_consumed": _recovered("the server's router consumed the begin markers"),
    "markup.recovered_bare": _recovered("bare functions.NAME:N text"),
    "markup.recovered_markup": _recovered("whole markup"),
    "ids.call": _ids("tool-call"),
    "ids.result": _ids("tool result's"),
    "ids.result_by_position": _ids("tool result's (matched by position)"),
    "ids.response": _ids("tool-call"),
    "ids.orphan": _ids("tool result without a call,"),
    "finish_reason.fixed": lambda before, after: f"finish_reason {_shown(before)} -> {_shown(after)}",
    "finish_reason.synthesized": lambda before, after: f"no finish_reason came; {_shown(after)} added",
    "done.synthesized": lambda before, after: "no data: [DONE] came; added",
    "think.open_tag": lambda before, after: "a <think> tag in the content: the text after it moved to reasoning",
    "think.close_tag": lambda before, after: "a </think> tag in the content: the text before it moved to reasoning",
    "index.renumbered": lambda before, after: f"tool-call index {_shown(before)} -> {_shown(after)}",
    "reasoning.stripped": lambda before, after: f"reasoning of an earlier turn removed: {_shown(before)}",
    "reasoning.renamed": lambda before, after: f"reasoning field {_shown(before)} renamed {_shown(after)}",
    "usage.hoisted": lambda before, after: "usage moved to the final chunk, where clients read it",
    "tool_calls.empty_dropped": lambda before, after: "an empty tool_calls list removed",
}


def describe(repair: dict[str, Any]) -> str:
    """One line: `<kind> <where>: <what changed>`."""
    kind = str(repair.get("kind", "?"))
    index = repair.get("message_index")
    where = ""
    if isinstance(index, int):
        place = _REQUEST_PLACE if repair.get("phase") == "request" else _RESPONSE_PLACE
        where = f" ({place} {index})"
    before, after = repair.get("before"), repair.get("after")
    words = WORDS.get(kind)
    if words is not None:
        try:
            return f"{kind}{where}: {words(before, after)}"
        except Exception:  # a record of another version: shown plainly, never a traceback
            pass
    if before is None and after is None:
        return f"{kind}{where}"
    return f"{kind}{where}: {_shown(before)} -> {_shown(after)}"
