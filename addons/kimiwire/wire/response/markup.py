"""Raw Kimi tool-call markup leaked into text, turned back into tool calls (incrementally).

When a server's tool parser fails, the model's own tokens reach the client as text:
`<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{...}
<|tool_call_end|><|tool_calls_section_end|>` (also the singular `<|tool_call_section_begin|>`),
or, with special tokens skipped, `functions.read:0{...}`. Routers that consume the begin markers
leave `read:0<|tool_call_argument_begin|>{...}<|tool_calls_section_end|>`, with or without
`functions.`, several calls in a row (typeclaw PR #344, a K2.6 router); a section may also lose
only its `<|tool_call_begin|>`. A scanner per text field holds back only what may still become
markup and returns the rest at once.

Known names: the forms without any begin marker (`functions.NAME:N{json}`, `NAME:N<|tool_call_
argument_begin|>…`) are recovered only for tools the request declared, or, when it declares none
(pi-ai sends `tools: []` after tool history, and SGLang then parses no calls), for tools its
history called. What is held: a tail that may start a marker (`<|tool_call…`), `functions.…`, or
a last word (after whitespace, `>` or `}`) that may still become `KNOWN_NAME:N` before an argument
marker; a head is recognised only after the same boundaries, so what a stream recovers does not
depend on where the text was cut.

The module is over 500 lines for one reason: it is one concern, the Kimi markup grammar (its
tokens, id forms and boundaries) and the scanner that reads it incrementally (a class under 400
lines); the whole-text entries at the end (`recover_all`, `embedded_markup`) are that scanner run
once. Split, the grammar would sit in a module that only this scanner reads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from dataclasses import dataclass, field

import orjson

from kimiwire.wire.response import k3_markup as k3

MARKER_PREFIX = "<|tool_call"
BARE_PREFIX = "functions."
SECTION_BEGINS = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
SECTION_ENDS = ("<|tool_calls_section_end|>", "<|tool_call_section_end|>")
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
STRAY_TOKENS = (*SECTION_ENDS, CALL_END)
KNOWN_TOKENS = (*SECTION_BEGINS, CALL_BEGIN, ARGUMENT_BEGIN, *STRAY_TOKENS)
_CALL_STOPS = (CALL_END, CALL_BEGIN, *SECTION_ENDS)
_HEAD_WINDOW = 200  # how far before an argument marker its `NAME:N` head is looked for

_ID = re.compile(r"^(?:functions[.\s])?(?P<name>.+?)(?::(?P<index>\d+))*$", re.S)
_MANGLED_ID = re.compile(r"^functions(?P<name>[A-Za-z_\-][\w\-]*?)(?P<index>\d+)$")
_BARE_HEAD = re.compile(r"functions\.(?P<name>[\w\-.]+?):(?P<index>\d+)\s*(?=\{)")
_BARE_PARTIAL = re.compile(r"functions\.[\w\-.]*(?::\d*)?\s*")
# `NAME:N` right before an argument marker whose begin markers were consumed.
_BOUNDARY = re.compile(r"[\s>}]")  # what may precede such a head
_CONSUMED_HEAD = re.compile(r"(?<![^\s>}])(?:functions\.)?(?P<name>[\w\-.]+?):(?P<index>\d+)\s*\Z")


@dataclass(slots=True)
class RecoveredCall:
    raw_id: str
    name: str
    arguments: str
    form: str  # "markup" | "consumed" | "bare" | "k3"


CONTENT = "content"
REASONING = "reasoning"
OPEN_THINK = "<think>"
CLOSE_THINK = "</think>"
COPY_LIMIT = 1 << 20  # reasoning kept in case it turns out to be a K3 answer (characters)
TAIL_LIMIT = 2048  # content remembered to recognise text re-sent verbatim (vLLM keeps 1024)


@dataclass(slots=True)
class _K3Step:
    """What one K3 element does: consume `size` characters from `begin` (None: wait for more
    text), keep them as text (`verbatim`), then send later text to `route`."""

    begin: int
    size: int | None
    verbatim: bool = False
    route: str | None = None
    answer_found: bool = False  # reasoning so far was the answer (a response close in reasoning)


def name_from_id(raw_id: str, declared: Collection[str]) -> str:
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


def _strip_tokens(text: str) -> str:
    for token in KNOWN_TOKENS:
        if token in text:
            text = text.replace(token, "")
    return text.strip()


def calls_in_region(region: str) -> list[tuple[str, str]]:
    """(raw id, arguments) of every call in a stretch of markup: each argument marker, the id
    before it (begin markers optional) and the JSON object after it (else the text up to the
    next marker)."""
    calls: list[tuple[str, str]] = []
    position = 0
    while (marker := region.find(ARGUMENT_BEGIN, position)) != -1:
        raw_id = _strip_tokens(region[position:marker])
        start = marker + len(ARGUMENT_BEGIN)
        while start < len(region) and region[start].isspace():
            start += 1
        end = _json_object_end(region, start) if region.startswith("{", start) else -1
        if end == -1:
            stops = [found for token in _CALL_STOPS if (found := region.find(token, start)) != -1]
            end = min(stops, default=len(region))
        calls.append((raw_id, region[start:end].strip()))
        position = end
    return calls


def _heads_of(known: frozenset[str]) -> tuple[frozenset[str], frozenset[str], int]:
    """The words `_head_tail` holds for these tool names, the characters they can end with, and
    the longest tail that may hold one (with `:N` and spaces). The same for every scanner of
    every stream of a request's tools: two scanners per stream built them anew, so
    they are remembered, for tool sets of a usual size only (the sets grow with the names)."""
    if sum(map(len, known)) > _REMEMBERED_NAMES_LENGTH:
        return _build_heads(known)
    return _remembered_heads(known)


_REMEMBERED_NAMES_LENGTH = 4096


def _build_heads(known: frozenset[str]) -> tuple[frozenset[str], frozenset[str], int]:
    prefixes = {name[:i] for name in known for i in range(1, len(name) + 1)}
    heads = frozenset(
        prefixes | {BARE_PREFIX[:i] for i in range(1, len(BARE_PREFIX) + 1)} | {BARE_PREFIX + p for p in prefixes}
    )
    return heads, frozenset("".join(heads)), len(BARE_PREFIX) + max(map(len, known), default=0) + 24


_remembered_heads = functools.lru_cache(maxsize=64)(_build_heads)


class MarkupScanner:
    """One per text field of one choice. `feed` and `finish` return (text to emit, calls).
    `known`: tool names the marker-less forms and K3 calls may call (`RequestFacts.known_tool_names`).

    K3 channels move text between the fields: `field` is this scanner's own (content or
    reasoning); text of a think channel found in content, or of a response channel found in
    reasoning, is collected in `moved` for the other field's delta. `keep_copy` (reasoning of a
    K3 request): the reasoning delivered is remembered, bounded, because a response close in it
    means all of it was the answer (sgl-project/sglang PR #33995: the model skipped the think
    channel the template prefilled); `keep_tail`: the end of the content delivered is
    remembered, to recognise text an engine sends again."""

    def __init__(
        self, known: Collection[str], field: str = CONTENT, keep_copy: bool = False, keep_tail: bool = False
    ) -> None:
        self.known = frozenset(known)
        self.pending = ""
        self._last = ""  # the last character emitted: the text before `pending`, for word boundaries
        self._heads, self._head_chars, self._longest_head = _heads_of(self.known)
        self.field = field
        self.route = field  # where text goes now (K3 channels change it)
        self.moved: list[str] = []  # text for the other field, drained by the caller
        self.events: list[str] = []  # repair kinds (K3 channel work), drained by the caller
        self.k3_seen = False
        self.section_open = False  # a K3 tools section is open: held until it closes
        self.cut_call = False  # a K3 call block was cut off: it went out as text
        self.copy: list[str] | None = [] if keep_copy else None
        self._copy_size = 0
        self._tail: list[str] | None = [] if keep_tail else None  # pieces, joined when read
        self._tail_size = 0
        # Think tags at the edges of the reasoning field (the field itself says it is reasoning):
        # a leading `<think>` is removed, a `</think>` that ends the reasoning too (held until
        # more reasoning shows it was not the end).
        self.edge_start = field == REASONING
        self.edge_close = ""

    def passes_unchanged(self, text: str) -> bool:
        """True when `feed(text)` would return `text` itself and hold nothing (a cheap check)."""
        return (
            not self.pending
            and not self.edge_close
            and (self.field != REASONING or "<" not in text)  # think tags at the field's edges
            and "<|" not in text
            and (not self.known or BARE_PREFIX not in text)
            and self.route == self.field
            and not self._holdback(text)
        )

    def delivered(self, text: str) -> None:
        """`text` went out in this field unchanged (fed, or taken by the repairer's fast path)."""
        if self.copy is not None:
            self._copy_size += len(text)
            if self._copy_size > COPY_LIMIT:
                self.copy = None
            else:
                self.copy.append(text)
        tail = self._tail
        if tail is not None:
            tail.append(text)
            self._tail_size += len(text)
            if self._tail_size > 4 * TAIL_LIMIT:  # trimmed now and then, not on every text
                self.tail = self.tail

    @property
    def keeps_delivered(self) -> bool:
        return self.copy is not None or self._tail is not None

    @property
    def tail(self) -> str | None:
        """The end of what went out in this field (`keep_tail`), at least TAIL_LIMIT characters."""
        return None if self._tail is None else "".join(self._tail)[-TAIL_LIMIT:]

    @tail.setter
    def tail(self, text: str | None) -> None:
        if text is None:
            self._tail = None
        else:
            text = text[-TAIL_LIMIT:]
            self._tail, self._tail_size = [text], len(text)

    def feed(self, text: str) -> tuple[str, list[RecoveredCall]]:
        if self.passes_unchanged(text):
            self._last = text[-1:] or self._last
            if self.copy is not None or self._tail is not None:
                self.delivered(text)
            if self.edge_start and text:  # reasoning began (the repairer's fast path decides alike)
                self.edge_start = False
            return text, []
        if self.edge_start:
            after_think = self._leading_think(text)
            if after_think is None:
                return "", []
            text = after_think
        self.pending += text
        emitted, calls = self._scan(final=False)
        return self._trailing_think(emitted), calls

    def _leading_think(self, text: str) -> str | None:
        """The reasoning field's start: a `<think>` there is removed; None while the text so far
        is whitespace and a start of `<think>` (held in `pending`)."""
        text = self.pending + text
        self.pending = ""
        stripped = text.lstrip()
        if stripped.startswith(OPEN_THINK):
            self.edge_start = False
            self.events.append("think.reasoning_edge_open")
            return stripped[len(OPEN_THINK) :]
        if not stripped or (OPEN_THINK.startswith(stripped) and len(text) - len(stripped) <= 64):
            self.pending = text
            if len(text) > 64 + len(OPEN_THINK):
                self.edge_start = False
                return ""
            return None
        self.edge_start = False
        return text

    def _trailing_think(self, emitted: str) -> str:
        """A `</think>` (and whitespace) ending what goes out in the reasoning field is held: the
        next reasoning puts it back, the field's end drops it."""
        if self.field != REASONING or not (self.edge_close or emitted):
            return emitted
        if self.route != self.field:
            return emitted
        emitted = self.edge_close + emitted
        self.edge_close = ""
        body = emitted.rstrip()
        if body.endswith(CLOSE_THINK):
            cut = len(body) - len(CLOSE_THINK)
        elif "<" in emitted[-len(CLOSE_THINK) :]:
            cut = len(emitted) - _longest_prefix_suffix(emitted, CLOSE_THINK)
        else:
            return emitted
        self.edge_close = emitted[cut:]
        return emitted[:cut]

    def _drop_edge_close(self) -> str:
        """The reasoning field ended: a held `</think>` is dropped, a start of one goes out."""
        held, self.edge_close = self.edge_close, ""
        if held.rstrip().endswith(CLOSE_THINK):
            self.events.append("think.reasoning_edge_close")
            return ""
        return held

    def finish(self) -> tuple[str, list[RecoveredCall]]:
        if not self.pending:
            return self._drop_edge_close(), []
        self.edge_start = False
        emitted, calls = self._scan(final=True)
        emitted = self._trailing_think(emitted)
        return emitted + self._drop_edge_close(), calls

    def _put(self, out: list[str], text: str) -> None:
        if not text:
            return
        if self.route == self.field:
            out.append(text)
        else:
            self.moved.append(text)

    def _scan(self, final: bool) -> tuple[str, list[RecoveredCall]]:
        text = self.pending
        out: list[str] = []
        calls: list[RecoveredCall] = []
        position = 0
        while position < len(text):
            start = self._next_start(text, position)
            if start == -1:
                keep = 0 if final else self._holdback(text[position:])
                self._put(out, text[position : len(text) - keep])
                position = len(text) - keep
                break
            if text.startswith("<|", start) and not MARKER_PREFIX.startswith(text[start : start + len(MARKER_PREFIX)]):
                step = self._k3(text, start, final, calls)
                if step.size is None:
                    self._put(out, text[position:start])
                    position = start
                    break
                self._put(out, text[position : step.begin])
                if step.verbatim:
                    self._put(out, text[step.begin : step.begin + step.size])
                elif step.size == 0:
                    self._put(out, text[step.begin])
                if step.answer_found:
                    self._answer_found(out)
                if step.route is not None:
                    self.route = step.route
                position = step.begin + max(step.size, 1)
                continue
            begin = start
            partial = None if text.startswith(MARKER_PREFIX, start) else _BARE_PARTIAL.match(text, start)
            if partial is None:
                begin, consumed = self._marker(text, position, start, final, calls)
            elif text.startswith(MARKER_PREFIX, partial.end()):  # `functions.NAME:N<|tool_call…`
                begin, consumed = self._marker(text, start, partial.end(), final, calls)
            else:
                consumed = self._bare(text, start, final, calls)
            if consumed is None:  # may still become markup: wait for more text
                self._put(out, text[position:begin])
                position = begin
                break
            self._put(out, text[position:begin])
            if consumed == 0:  # not markup after all: emit its first character and go on
                self._put(out, text[begin])
                position = begin + 1
            else:
                position = begin + consumed
        self.pending = text[position:]
        emitted = "".join(out)
        self._last = text[position - 1] if position else self._last
        if emitted and (self.copy is not None or self._tail is not None):
            self.delivered(emitted)
        return emitted, calls

    def _answer_found(self, out: list[str]) -> None:
        """A response close in reasoning before any other channel: the reasoning was the answer.
        What went out as reasoning goes out again as content (sent text cannot be taken back);
        what this read had not sent yet moves to content."""
        self.events.append("k3.answer_in_reasoning")
        if self.copy:
            self.moved.extend(self.copy)
        elif self.copy is None:
            self.events.append("k3.answer_copy_dropped")
        self.moved.extend(out)
        out.clear()
        self.copy = None

    def _k3(self, text: str, start: int, final: bool, calls: list[RecoveredCall]) -> _K3Step:
        found = k3.element_at(text, start, final)
        if found is k3.Scan.WAIT:
            return _K3Step(start, None)
        if found is k3.Scan.NONE:
            return _K3Step(start, 0)
        if isinstance(found, tuple):  # `<|end_of_msg|>`, a stray `<|sep|>`
            self.events.append("k3.marker_removed")
            return _K3Step(start, found[1] - start)
        element = found
        if not isinstance(element, k3.Element) or element.channel is None:
            return _K3Step(start, 0)
        channel = element.channel
        first = not self.k3_seen
        size = element.end - start
        if element.opens and channel in (k3.Channel.TOOLS, k3.Channel.CALL):
            return self._k3_section(text, start, element, final, calls)
        self.k3_seen = True
        if channel is k3.Channel.THINK:
            self.events.append("k3.think_channel")
            return _K3Step(start, size, route=REASONING if element.opens else CONTENT)
        if channel is k3.Channel.RESPONSE:
            if element.opens:
                self.events.append("k3.response_channel")
                return _K3Step(start, size, route=CONTENT)
            answer = first and self.field == REASONING and self.route == self.field
            return _K3Step(start, size, route=CONTENT, answer_found=answer)
        self.events.append("k3.marker_removed")
        return _K3Step(start, size)

    def _k3_section(
        self, text: str, start: int, element: k3.Element, final: bool, calls: list[RecoveredCall]
    ) -> _K3Step:
        """A tools section (or a call whose section open was consumed): held until it closes;
        its calls are recovered when every one names a known tool, else it goes out as text."""
        inside = element.end if element.channel is k3.Channel.TOOLS else start
        ends = k3.section_end(text, inside)
        if ends is None:
            if not final:
                self.section_open = True
                return _K3Step(start, None)
            inner_end = stop = len(text)
        else:
            inner_end, stop = ends
        self.section_open = False
        self.k3_seen = True
        section = k3.decode_section(text[inside:inner_end])
        names = [call.name for call in section.calls]
        if not section.calls or not self.known or any(name not in self.known for name in names):
            self.events.append("k3.section_not_recovered")
            return _K3Step(start, stop - start, verbatim=True)
        for call in section.calls:
            calls.append(RecoveredCall("", call.name, call.arguments, "k3"))
        if section.incomplete:
            # The output was cut inside a call: the complete calls are real; the cut one goes out
            # as text, as the upstream sent it, and is never completed into a call.
            self.cut_call = True
            self.events.append("k3.call_cut")
            cut_at = k3.last_call_end(text, inside, inner_end)
            return _K3Step(start, cut_at - start, route=None)
        return _K3Step(start, stop - start)

    def _next_start(self, text: str, position: int) -> int:
        marker = text.find("<|", position)
        while marker != -1 and not (text.startswith(MARKER_PREFIX, marker) or k3.could_start(text, marker)):
            marker = text.find("<|", marker + 2)
        bare = text.find(BARE_PREFIX, position) if self.known else -1
        if marker == -1:
            return bare
        if bare == -1:
            return marker
        return min(marker, bare)

    def _holdback(self, text: str) -> int:
        keep = 0
        if "<" in text[-len(MARKER_PREFIX) - 1 :]:
            keep = max(_longest_prefix_suffix(text, MARKER_PREFIX + "s"), k3.holdback(text))
        if self.known:
            # a marker's start may follow the head of a call whose begin markers were consumed
            keep += self._head_tail(text[: len(text) - keep] if keep else text)
            if "f" in text[-len(BARE_PREFIX) :]:
                keep = max(keep, _longest_prefix_suffix(text, BARE_PREFIX))
        return keep

    def _head_tail(self, text: str) -> int:
        """Length of a trailing word (after whitespace, `>` or `}`) that may still become the head
        `[functions.]KNOWN:N` of a call whose begin markers were consumed: a start of a known name
        or of `functions.`, or `KNOWN:N` and whitespace. Runs on every text delta: cheap checks first."""
        text = text[-_HEAD_WINDOW:]
        if ":" in text[-self._longest_head :]:
            body = text.rstrip()
        elif text[-1:] in self._head_chars:
            body = text
        else:
            return 0
        word = body.rsplit(None, 1)[-1] if body else ""
        word = word[max(word.rfind(">"), word.rfind("}")) + 1 :]
        if len(body) == len(text) and word in self._heads:
            return len(word)
        name, colon, index = word.partition(":")
        if colon and (not index or index.isdigit()) and name.removeprefix(BARE_PREFIX) in self.known:
            return len(text) - len(body) + len(word)
        return 0

    def _marker(
        self, text: str, position: int, start: int, final: bool, calls: list[RecoveredCall]
    ) -> tuple[int, int | None]:
        """(where the markup begins, its length; 0: not markup, None: wait for more text)."""
        close = text.find("|>", start + len(MARKER_PREFIX))
        if close == -1 or close - start > 40:
            if close == -1 and not final and len(text) - start < 40:
                return start - (self._head_tail(text[position:start]) if self.known else 0), None
            return start, 0
        token = text[start : close + 2]
        if token not in KNOWN_TOKENS:
            return start, 0
        if token in STRAY_TOKENS:
            return start, len(token)
        if token == ARGUMENT_BEGIN:
            head = _CONSUMED_HEAD.search(text, max(position, start - _HEAD_WINDOW), start)
            glued = head is not None and head.start() == 0 and self._last and not _BOUNDARY.match(self._last)
            if head is None or glued or head.group("name") not in self.known:
                return start, len(token)  # a stray argument marker
            start = head.start()
            end_tokens: tuple[str, ...] = SECTION_ENDS
            form = "consumed"
        elif token == CALL_BEGIN:
            end_tokens, form = (CALL_END,), "markup"
        else:
            end_tokens, form = SECTION_ENDS, "markup"
        region_end = -1
        for end_token in end_tokens:
            found = text.find(end_token, close + 2)
            if found != -1 and (region_end == -1 or found + len(end_token) < region_end):
                region_end = found + len(end_token)
        if region_end == -1:
            if not final:
                return start, None
            region_end = len(text)
        for raw_id, arguments in calls_in_region(text[start:region_end]):
            calls.append(RecoveredCall(raw_id, name_from_id(raw_id, self.known), arguments, form))
        return start, region_end - start

    def _bare(self, text: str, start: int, final: bool, calls: list[RecoveredCall]) -> int | None:
        head = _BARE_HEAD.match(text, start)
        if head is None:
            partial = _BARE_PARTIAL.match(text, start)
            if not final and partial is not None and MARKER_PREFIX.startswith(text[partial.end() :]):
                return None  # the text so far may still become a head or a marker
            return 0
        if head.group("name") not in self.known:
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


def recover_all(text: str, known: Collection[str]) -> tuple[str, list[RecoveredCall]]:
    """The whole text scanned at once: (text left, calls)."""
    scanner = MarkupScanner(known)
    head, calls = scanner.feed(text)
    tail, more = scanner.finish()
    return head + tail, calls + more


@dataclass(slots=True)
class EmbeddedMarkup:
    """Kimi markup found inside one call's arguments (the model opened a new tool section inside
    a string value: vLLM 0.24 + K2.6, anomalyco/opencode#37297)."""

    calls: list[RecoveredCall] = field(default_factory=list)  # complete calls: JSON objects
    incomplete: list[RecoveredCall] = field(default_factory=list)  # JSON cut or invalid: never delivered
    remainder: str = ""  # the outer arguments without the markup


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def embedded_markup(arguments: str, known: Collection[str]) -> EmbeddedMarkup | None:
    """None when `arguments` (a call's complete arguments) hold no Kimi marker. Otherwise the
    calls inside: as written, or, when the outer arguments are valid JSON, inside its decoded
    string values (the server escaped the embedded JSON)."""
    if MARKER_PREFIX not in arguments:
        return None
    remainder, found = recover_all(arguments, known)
    result = EmbeddedMarkup(remainder=remainder)
    if not all(_is_json_object(call.arguments) for call in found):
        try:
            outer = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            outer = None
        if isinstance(outer, dict):
            decoded: list[RecoveredCall] = []
            for value in outer.values():
                if isinstance(value, str) and MARKER_PREFIX in value:
                    decoded += recover_all(value, known)[1]
            if decoded:
                found = decoded
    for call in found:
        (result.calls if _is_json_object(call.arguments) else result.incomplete).append(call)
    return result
