"""The per-read fast path of the stream repairer: events shaped like one the full path already
passed unchanged are forwarded without parsing (most events of a stream are plain text deltas).

A stream's plain text deltas differ only in their text, e.g.
`data: {"id":"…","object":"chat.completion.chunk","created":…,"model":"…","choices":[{"index":0,
"delta":{"content":"` TEXT `"},"logprobs":null,"finish_reason":null}]}`. When the full path lets
such an event through unchanged, its bytes become a template: the head (everything before the
text), the tail (after the text, to the end of `choices`) and the rest. A later event matches
when it has the same head and tail, a text that is a valid JSON string without `<` (Kimi markup
and think tags start with it; also escaped, `\\u003c`) or line ends, and after `choices` only
scalar fields (no usage, error or second choices): the template's rest (a Kimi server sends the
same bytes there in every event, `}` or `,"usage":null}`: one comparison), or any that
EVENT_REST accepts. The full path would forward such an event as it came: it differs from one it
did forward only in what no repair looks at, as long as the repairer's state allows it
(`FastPath` asks the choice repairer, `ChoiceRepairer.plain_readiness` and `text_passes`: the
predicates of the repairs themselves).

Nothing assumes one server's layout: the head and tail are whatever bytes the stream's own first
plain event had (field order, `json.dumps`'s `", "` and `": "` spacing, null fields such as
`logprobs`, `stop_reason`, `matched_stop`, `token_ids`, `kv_transfer_params`, `role`,
`reasoning_content` or `tool_calls` null beside the text in the delta, `usage: null`), so each
stream learns its own. vLLM 0.13 writes each reasoning text twice, under `reasoning` and
`reasoning_content`: its template holds the bytes between the two (`mirror`), and a later event
matches when its second text is byte for byte its first; both names' repairs see it.

Argument fragments of held tool calls have a fast path of their own (fast_fragments.py).

Conservative by construction: any event that does not match sends the whole read to the full path.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from kimiwire.wire.response.reasoning_field import TEXT_KEYS

if TYPE_CHECKING:
    from kimiwire.wire.response.stream_repair import StreamRepairer

MAX_TEMPLATES = 4  # head shapes kept per stream: content, reasoning, and a spare or two
MIRRORED = frozenset(TEXT_KEYS[1:])  # the reasoning fields, whose text a server may write under both

# A JSON string's body (valid UTF-8, the escapes JSON allows) without `<`, `\u003c`, lone
# surrogates or raw control characters, then its closing quote. Runs of plain ASCII are one
# repeat of one character set (the regex engine's tight loop), the rest one alternation each.
_ASCII_RUN = rb"[\x20\x21\x23-\x3b\x3d-\x5b\x5d-\x7f]*"
_MULTIBYTE = (
    rb"[\xc2-\xdf][\x80-\xbf]"
    rb"|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
_ESCAPE = rb'\\["\\/bfnrt]|\\u(?!003[cC]|[dD][89a-fA-F])[0-9a-fA-F]{4}'
# The bytes of _ASCII_RUN: a text made only of them is a JSON string body by itself, and the usual
# one. `text.translate(PLAIN_ONLY) is text` tells so in one call, no regular expression: the table
# maps these bytes to themselves and any other byte to another one, and CPython's translate returns
# the object itself when no byte changed (one that always copied would only send every text to the
# regular expressions). Deleting them instead, `translate(None, PLAIN_ASCII)`, builds a table of
# their 93 bytes on every call, slower for every token.
PLAIN_ASCII = bytes(b for b in range(0x20, 0x80) if b not in b'"\\<')
PLAIN_ONLY = bytes(b if b in PLAIN_ASCII else (0x22 if b != 0x22 else 0x5C) for b in range(256))
TEXT_BODY = re.compile(_ASCII_RUN + rb"(?:(?:" + _MULTIBYTE + rb"|" + _ESCAPE + rb")" + _ASCII_RUN + rb')*"')
# After `choices`: scalar fields only (`usage` only as null; no error, no second `choices`), the
# object's end, and the blank line that ends the event.
_SCALAR = rb'null|true|false|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
# JSON allows blanks around `,` and `:` (`json.dumps` writes `", "` and `": "`); within one SSE data
# line only spaces and tabs.
_BLANK = rb"[ \t]*"
_COLON = _BLANK + rb":" + _BLANK
_NAME = rb'"(?!usage"|error"|choices")[A-Za-z_][A-Za-z0-9_]*"'
_FIELD = rb'"usage"' + _COLON + rb"null|" + _NAME + _COLON + rb"(?:" + _SCALAR + rb")"
_COMMA = _BLANK + rb"," + _BLANK
EVENT_REST = re.compile(rb"(?:" + _COMMA + rb"(?:" + _FIELD + rb"))*" + _BLANK + rb"\}" + _BLANK + rb"\n\n")
_CHOICES = re.compile(rb'"choices"' + _COLON + rb"\[")


@dataclass(frozen=True, slots=True)
class PlainTemplate:
    head: bytes  # the event up to its text's opening quote
    tail: bytes  # from the text's closing quote to the `]` that closes `choices`
    rest: bytes  # after `choices` to the event's end (a later event's may differ: EVENT_REST decides then)
    key: str  # the text's field: content, reasoning_content or reasoning
    reasoning: bool  # the field is a reasoning field
    role: bool = False  # the delta has a `role` field (null)
    # vLLM 0.13 writes each reasoning text twice, under `reasoning` and `reasoning_content`: then
    # `mirror_key` is the second field and `mirror` the bytes from the first text's closing quote
    # to the second's opening one (`tail` follows the second text).
    mirror_key: str = ""
    mirror: bytes = b""
    copies: int = 1  # the texts of an event: 2 with a mirror
    text_start: int = 0  # len(head)
    tail_size: int = 0  # len(tail)
    rest_size: int = 0  # len(rest)
    end: bytes = b""  # tail + rest
    end_size: int = 0  # len(end)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_start", len(self.head))
        object.__setattr__(self, "copies", 2 if self.mirror else 1)
        object.__setattr__(self, "tail_size", len(self.tail))
        object.__setattr__(self, "rest_size", len(self.rest))
        # With a mirror, an `end` no event has: `plain_read`'s one-text shortcut never takes the
        # template (an event with one text and the same head and tail is not one of its events).
        object.__setattr__(self, "end", self.tail + self.rest if not self.mirror else b"\0")
        object.__setattr__(self, "end_size", len(self.end))


@dataclass(frozen=True, slots=True)
class PlainText:
    """One event the fast path took: its template and its text."""

    template: PlainTemplate
    text: str


NO_TEMPLATE = PlainTemplate(b"\0", b"\0", b"\0", "content", False)  # matches no event (none starts with NUL)


@functools.lru_cache(maxsize=64)
def _opening(name: str) -> re.Pattern[bytes]:
    """The bytes that open field `name`'s string value, compiled once per name (a handful of
    field names ever reach here: content, reasoning_content, reasoning)."""
    return re.compile(rb'"' + re.escape(name.encode()) + rb'"' + _COLON + rb'"')


def learn_template(
    raw: bytes, key: str, reasoning: bool, role: bool = False, mirror_key: str = ""
) -> PlainTemplate | None:
    """The template of `raw`, a whole single-line event the full path forwarded unchanged whose
    only choice's delta holds nothing but `key` (a string; with `mirror_key`, the same string
    under both) and null fields; None when its bytes do not have the expected shape."""
    if not raw.startswith(b"data:") or not raw.endswith(b"\n\n") or raw.count(b"\n") != 2:
        return None
    choices = _CHOICES.search(raw)
    if choices is None:
        return None
    found = []
    after = choices.end()
    for name in (key, mirror_key) if mirror_key else (key,):
        openings = list(_opening(name).finditer(raw, after))
        if len(openings) != 1:
            return None
        found.append((openings[0].start(), openings[0].end(), name))
    found.sort()
    head_end = found[0][1]
    body = TEXT_BODY.match(raw, head_end)
    if body is None:
        return None
    closing = body.end() - 1
    mirror = b""
    if mirror_key:
        key, mirror_key = found[0][2], found[1][2]  # the first in the bytes is the one the head ends with
        second_start, second = found[1][0], found[1][1]
        text = raw[head_end:closing]
        if second_start <= closing or not raw.startswith(text + b'"', second):
            return None
        mirror = raw[closing:second]
        closing = second + len(text)
    tail_end = raw.find(b"]", closing)
    if tail_end == -1:
        return None
    rest = EVENT_REST.match(raw, tail_end + 1)
    if rest is None or rest.end() != len(raw):
        return None
    return PlainTemplate(
        raw[:head_end], raw[closing : tail_end + 1], raw[tail_end + 1 :], key, reasoning, role, mirror_key, mirror
    )


def text_of(body: bytes) -> str:
    """The text of a matched event, from its JSON string body (without quotes)."""
    if b"\\" not in body:
        return body.decode()
    text: str = orjson.loads(b'"' + body + b'"')  # a JSON string literal
    return text


_TEXT_BODY = TEXT_BODY.match
_EVENT_REST = EVENT_REST.match
_EVENT_REST_TO_END = EVENT_REST.fullmatch


class FastPath:
    """The stream repairer's fast path: the templates it learned and the one readiness question,
    asked of choice 0's repairer after each read the full path took (`refresh`). A read that is
    nothing but plain text events matching a template passes as it came when that answer lets
    it, each text shown to `ChoiceRepairer.text_passes` when the answer says so."""

    def __init__(self, stream: StreamRepairer) -> None:
        self.stream = stream
        self.templates: list[PlainTemplate] = []
        self.template_last = NO_TEMPLATE  # the template the last fast read matched, tried first
        # The answer of the last `refresh`:
        self.ready = False  # plain text of choice 0 may pass
        self.content_blocked = False  # ... but not content
        self.reasoning_blocked = False  # ... or not reasoning
        self.look = False  # ... each text once choice 0's repairer said it passes

    def refresh(self) -> None:
        """Ask again, after a read the full path took: the stream is open and plain, and choice
        0's repairer says which plain texts pass unchanged now."""
        stream = self.stream
        self.ready = False
        if not (stream.fast_path and self.templates) or stream.bypass or stream.done or stream.decoder.pending:
            return
        choice = stream.choices.get(0)
        readiness = choice.plain_readiness() if choice is not None else None
        if readiness is None:
            return
        self.ready = True
        self.content_blocked = not readiness.content
        self.reasoning_blocked = not readiness.reasoning
        self.look = readiness.look

    def plain_read(self, data: bytes) -> int:
        """The number of events in `data` when it is nothing but whole plain text events matching
        a template that the full path would forward unchanged in the current state; their counts
        and text flags are taken as the full path takes them. 0 (and nothing changed) otherwise:
        the read goes to the full path."""
        if not self.ready:
            return 0
        # The usual read: one event of the shape the last read had. Kept flat: every event of a
        # stream passes here.
        template = self.template_last
        if not data.startswith(template.head) or (
            self.reasoning_blocked if template.reasoning else self.content_blocked
        ):
            return self._plain_events(data)
        start = template.text_start
        closing = len(data) - template.end_size
        # Most texts are plain ASCII and the bytes after them the template's own: then the text
        # ends where those bytes begin. Anything else, the regular expressions decide.
        if (
            closing < start
            or not data.endswith(template.end)
            or (text := data[start:closing]).translate(PLAIN_ONLY) is not text
        ):
            if template.mirror:  # (its `end` matches no event: always here) two texts
                return self._plain_events(data)
            body = _TEXT_BODY(data, start)
            if body is None:
                return self._plain_events(data)
            closing = body.end() - 1
            end = closing + template.tail_size
            if not data.startswith(template.tail, closing) or not (
                (len(data) - end == template.rest_size and data.endswith(template.rest))
                or _EVENT_REST_TO_END(data, end)
            ):
                return self._plain_events(data)
        stream = self.stream
        if (
            closing > start
            and (stream.text_unseen or self.look)
            and not self._plain_text(template, data, start, closing, record=True)
        ):
            return 0
        stream.events_in += 1
        stream.data_events_in += 1
        if (handover := stream.handing_over) is not None:
            handover.plain.append(PlainText(template, text_of(data[start:closing])))
        return 1

    def steady_lane(self) -> tuple[bytes, bytes, int, int] | None:
        """What lets a caller pass an event on its own until its next `feed` or `plain_read`
        (RepairingStream's steady branch: one Python frame less per event): the last template's
        (head, tail + rest, text start, len(tail + rest)). An event with that head and end and a
        text of PLAIN_ASCII bytes only is one `plain_read` would take changing nothing but the two
        event counters, which the caller then adds itself (in bulk: `RepairingStream.settle`).
        None when a text would still change something: a repair to show it to, a text kind not
        seen yet, a gate taking the texts."""
        stream = self.stream
        if not self.ready or self.look or stream.handing_over is not None:
            return None
        template = self.template_last
        if template.mirror:  # (the lane's one text)
            return None
        if template.reasoning:
            if self.reasoning_blocked or not stream.reasoning_seen:
                return None
        elif self.content_blocked or not stream.content_seen:
            return None
        return template.head, template.end, template.text_start, template.end_size

    def _plain_events(self, data: bytes) -> int:
        """plain_read for any number of events, each of any template."""
        size = len(data)
        position = events = 0
        texts: list[tuple[PlainTemplate, int, int]] = []
        template = NO_TEMPLATE
        while position < size:
            for template in self.templates:
                if data.startswith(template.head, position):
                    break
            else:
                return 0
            if self.reasoning_blocked if template.reasoning else self.content_blocked:
                return 0
            start = position + template.text_start
            body = _TEXT_BODY(data, start)
            if body is None:
                return 0
            closing = body.end() - 1
            text_end = closing
            if template.mirror:  # the same text again after the mirror bytes
                second = closing + len(template.mirror)
                if not data.startswith(template.mirror, closing) or not data.startswith(data[start:closing], second):
                    return 0
                closing = second + closing - start
            if not data.startswith(template.tail, closing):
                return 0
            end = closing + template.tail_size
            if data.startswith(template.rest, end):
                position = end + template.rest_size
            else:
                rest = _EVENT_REST(data, end)
                if rest is None:
                    return 0
                position = rest.end()
            texts.append((template, start, text_end))
            events += 1
        if not events:
            return 0
        stream = self.stream
        if stream.text_unseen or self.look:
            for seen, start, closing in texts:
                if closing > start and (
                    (seen.mirror_key and self.look and not self._mirror_passes(seen, data[start:closing]))
                    or not self._plain_text(seen, data, start, closing)
                ):
                    return 0
            if self.look:  # every text passes: now they count as delivered
                choice = stream.choices[0]
                for seen, start, closing in texts:
                    if closing > start:
                        choice.delivered(seen.key, text := text_of(data[start:closing]))
                        if seen.mirror_key:
                            choice.delivered(seen.mirror_key, text)
        self.template_last = template
        stream.events_in += events
        stream.data_events_in += events
        if (handover := stream.handing_over) is not None:
            handover.plain += [PlainText(seen, text_of(data[start:closing])) for seen, start, closing in texts]
        return events

    def _mirror_passes(self, template: PlainTemplate, body: bytes) -> bool:
        """A mirrored template's text passes under its second name too (the full path asks both)."""
        return self.stream.choices[0].text_passes(template.mirror_key, text_of(body))

    def _plain_text(self, template: PlainTemplate, data: bytes, start: int, closing: int, record: bool = False) -> bool:
        """A matched event's non-empty text: choice 0's repairer decides when the readiness said
        to look; the turn's text flags are set. `record`: the text counts as delivered when it
        passes."""
        stream = self.stream
        if self.look:
            choice = stream.choices[0]
            text = text_of(data[start:closing])
            if not choice.text_passes(template.key, text):
                return False
            if record:  # (`plain_read`'s own event: never a mirrored template's)
                choice.delivered(template.key, text)
        if stream.text_unseen:
            if template.reasoning:
                stream.reasoning_seen = True
            else:
                stream.content_seen = True
            stream.text_unseen = not (stream.content_seen and stream.reasoning_seen)
        return True

    def learn(self, choice: dict[str, Any], raw: bytes) -> None:
        """`raw` went out unchanged: when its only choice is a plain text delta of choice 0, its
        shape becomes a template (whether such a text may pass later is `refresh`'s question)."""
        delta = choice.get("delta")
        if (
            choice.get("index", 0) != 0
            or type(delta) is not dict
            or choice.get("finish_reason") is not None
            or "usage" in choice
            or delta.get("tool_calls") is not None
        ):
            return
        key = mirror_key = None
        for name, value in delta.items():
            if value is None:
                continue
            if key is None and name in TEXT_KEYS and type(value) is str:
                key = name
                continue
            if mirror_key is None and name in MIRRORED and key in MIRRORED and value == delta[key]:
                mirror_key = name  # vLLM 0.13: the reasoning under both names
                continue
            return
        if key is None:
            return
        for known in self.templates:
            if raw.startswith(known.head):
                return
        template = learn_template(raw, key, key != "content", "role" in delta, mirror_key or "")
        if template is not None:
            if len(self.templates) >= MAX_TEMPLATES:
                del self.templates[0]
            self.templates.append(template)
            self.template_last = template
