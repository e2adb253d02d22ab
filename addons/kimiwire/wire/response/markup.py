"""Raw Kimi tool-call markup leaked into text, turned back into tool calls (incrementally).

When a server's tool parser fails, the model's own tokens reach the client as text:
`<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{...}
<|tool_call_end|><|tool_calls_section_end|>` (also the singular `<|tool_call_section_begin|>`),
or, with special tokens skipped, `functions.read:0{...}`. A scanner per text field holds back
only what may still become markup and returns the rest at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

MARKER_PREFIX = "<|tool_call"
BARE_PREFIX = "functions."
SECTION_BEGINS = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
SECTION_ENDS = ("<|tool_calls_section_end|>", "<|tool_call_section_end|>")
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
STRAY_TOKENS = (*SECTION_ENDS, ARGUMENT_BEGIN, CALL_END)
KNOWN_TOKENS = (*SECTION_BEGINS, CALL_BEGIN, *STRAY_TOKENS)

_CALL = re.compile(
    re.escape(CALL_BEGIN) + r"\s*(?P<id>.*?)\s*" + re.escape(ARGUMENT_BEGIN) + r"\s*(?P<args>.*?)\s*"
    r"(?:" + re.escape(CALL_END) + r"|$)",
    re.S,
)
_ID = re.compile(r"^(?:functions[.\s])?(?P<name>.+?)(?::(?P<index>\d+))*$", re.S)
_MANGLED_ID = re.compile(r"^functions(?P<name>[A-Za-z_\-][\w\-]*?)(?P<index>\d+)$")
_BARE_HEAD = re.compile(r"functions\.(?P<name>[\w\-.]+?):(?P<index>\d+)\s*(?=\{)")
_BARE_PARTIAL = re.compile(r"functions\.[\w\-.]*(?::\d*)?\s*")


@dataclass(slots=True)
class RecoveredCall:
    raw_id: str
    name: str
    arguments: str
    form: str  # "markup" | "bare"


def name_from_id(raw_id: str, declared: frozenset[str] | set[str] | dict) -> str:
    """`functions.read:0` -> read, `read:0` -> read, and the sanitized copy `functionsread0` -> read
    when `read` is a declared tool (models copy the mangled ids they see in history)."""
    raw_id = raw_id.strip()
    match = _ID.match(raw_id)
    name = match.group("name") if match else raw_id
    if name in declared or not declared:
        return name
    mangled = _MANGLED_ID.match(raw_id)
    if mangled and mangled.group("name") in declared:
        return mangled.group("name")
    return name


def _json_object_end(text: str, start: int) -> int:
    """Index after the JSON object opening at `start`, or -1 when it is not closed yet."""
    depth = 0
    in_string = False
    escaped = False
    for position in range(start, len(text)):
        char = text[position]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return position + 1
    return -1


def _longest_prefix_suffix(text: str, prefix: str) -> int:
    """Length of the longest end of `text` that is a proper start of `prefix`."""
    first = prefix[0]
    start = max(0, len(text) - len(prefix) + 1)
    while (start := text.find(first, start)) != -1:
        if prefix.startswith(text[start:]):
            return len(text) - start
        start += 1
    return 0


class MarkupScanner:
    """One per text field of one choice. `feed` and `finish` return (text to emit, calls)."""

    def __init__(self, declared: frozenset[str] | set[str] | dict) -> None:
        self.declared = declared
        self.pending = ""

    def passes_unchanged(self, text: str) -> bool:
        """True when `feed(text)` would return `text` itself and hold nothing (a cheap check)."""
        return (
            not self.pending
            and MARKER_PREFIX not in text
            and (not self.declared or BARE_PREFIX not in text)
            and not self._holdback(text)
        )

    def feed(self, text: str) -> tuple[str, list[RecoveredCall]]:
        if (
            not self.pending
            and MARKER_PREFIX not in text
            and (not self.declared or BARE_PREFIX not in text)
            and not self._holdback(text)
        ):
            return text, []
        self.pending += text
        return self._scan(final=False)

    def finish(self) -> tuple[str, list[RecoveredCall]]:
        if not self.pending:
            return "", []
        return self._scan(final=True)

    def _scan(self, final: bool) -> tuple[str, list[RecoveredCall]]:
        text = self.pending
        out: list[str] = []
        calls: list[RecoveredCall] = []
        position = 0
        while position < len(text):
            start = self._next_start(text, position)
            if start == -1:
                keep = 0 if final else self._holdback(text[position:])
                out.append(text[position : len(text) - keep])
                position = len(text) - keep
                break
            out.append(text[position:start])
            if text.startswith(MARKER_PREFIX, start):
                consumed = self._marker(text, start, final, calls)
            else:
                consumed = self._bare(text, start, final, calls)
            if consumed is None:  # may still become markup: wait for more text
                position = start
                break
            if consumed == 0:  # not markup after all: emit its first character and go on
                out.append(text[start])
                position = start + 1
            else:
                position = start + consumed
        self.pending = text[position:]
        return "".join(out), calls

    def _next_start(self, text: str, position: int) -> int:
        marker = text.find(MARKER_PREFIX, position)
        bare = text.find(BARE_PREFIX, position) if self.declared else -1
        if marker == -1:
            return bare
        if bare == -1:
            return marker
        return min(marker, bare)

    def _holdback(self, text: str) -> int:
        tail = text[-len(MARKER_PREFIX) :]
        if "<" not in tail and (not self.declared or "f" not in tail):
            return 0
        keep = _longest_prefix_suffix(text, MARKER_PREFIX + "s")
        if self.declared:
            keep = max(keep, _longest_prefix_suffix(text, BARE_PREFIX))
        return keep

    def _marker(self, text: str, start: int, final: bool, calls: list[RecoveredCall]) -> int | None:
        close = text.find("|>", start + len(MARKER_PREFIX))
        if close == -1 or close - start > 40:
            if close == -1 and not final and len(text) - start < 40:
                return None
            return 0
        token = text[start : close + 2]
        if token not in KNOWN_TOKENS:
            return 0
        if token in STRAY_TOKENS:
            return len(token)
        if token == CALL_BEGIN:
            end_tokens: tuple[str, ...] = (CALL_END,)
        else:
            end_tokens = SECTION_ENDS
        region_end = -1
        for end_token in end_tokens:
            found = text.find(end_token, close + 2)
            if found != -1 and (region_end == -1 or found + len(end_token) < region_end):
                region_end = found + len(end_token)
        if region_end == -1:
            if not final:
                return None
            region_end = len(text)
        region = text[start:region_end]
        for match in _CALL.finditer(region):
            raw_id = match.group("id")
            calls.append(RecoveredCall(raw_id, name_from_id(raw_id, self.declared), match.group("args"), "markup"))
        return region_end - start

    def _bare(self, text: str, start: int, final: bool, calls: list[RecoveredCall]) -> int | None:
        head = _BARE_HEAD.match(text, start)
        if head is None:
            partial = _BARE_PARTIAL.match(text, start)
            if not final and partial is not None and partial.end() == len(text):
                return None
            return 0
        if head.group("name") not in self.declared:
            return 0
        end = _json_object_end(text, head.end())
        if end == -1:
            return None if not final else 0
        arguments = text[head.end() : end]
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return 0
        if not isinstance(value, dict):
            return 0
        raw_id = text[start : head.end()].strip()
        calls.append(RecoveredCall(raw_id, head.group("name"), arguments, "bare"))
        return end - start
