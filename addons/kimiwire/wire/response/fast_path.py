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
(`StreamRepairer.plain_read` checks that, and runs the markup scanner on the text when the
request names tools).

Nothing assumes one server's layout: the head and tail are whatever bytes the stream's own first
plain event had (field order, `json.dumps`'s `", "` and `": "` spacing, null fields such as
`logprobs`, `stop_reason`, `matched_stop`, `token_ids`, `kv_transfer_params`, `role`,
`reasoning_content` or `tool_calls` null beside the text in the delta, `usage: null`), so each
stream learns its own.

Conservative by construction: any event that does not match sends the whole read to the full path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

MAX_TEMPLATES = 4  # head shapes kept per stream: content, reasoning, and a spare or two

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
    text_start: int = 0  # len(head)
    tail_size: int = 0  # len(tail)
    rest_size: int = 0  # len(rest)
    end: bytes = b""  # tail + rest
    end_size: int = 0  # len(end)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_start", len(self.head))
        object.__setattr__(self, "tail_size", len(self.tail))
        object.__setattr__(self, "rest_size", len(self.rest))
        object.__setattr__(self, "end", self.tail + self.rest)
        object.__setattr__(self, "end_size", len(self.tail) + len(self.rest))


@dataclass(frozen=True, slots=True)
class PlainText:
    """One event the fast path took: its template and its text."""

    template: PlainTemplate
    text: str


NO_TEMPLATE = PlainTemplate(b"\0", b"\0", b"\0", "content", False)  # matches no event (none starts with NUL)


def learn_template(raw: bytes, key: str, reasoning: bool, role: bool = False) -> PlainTemplate | None:
    """The template of `raw`, a whole single-line event the full path forwarded unchanged whose
    only choice's delta holds nothing but `key` (a string) and null fields; None when its bytes
    do not have the expected shape."""
    if not raw.startswith(b"data:") or not raw.endswith(b"\n\n") or raw.count(b"\n") != 2:
        return None
    choices = _CHOICES.search(raw)
    if choices is None:
        return None
    openings = list(re.finditer(rb'"' + re.escape(key.encode()) + rb'"' + _COLON + rb'"', raw[choices.end() :]))
    if len(openings) != 1:
        return None
    head_end = choices.end() + openings[0].end()
    body = TEXT_BODY.match(raw, head_end)
    if body is None:
        return None
    closing = body.end() - 1
    tail_end = raw.find(b"]", closing)
    if tail_end == -1:
        return None
    rest = EVENT_REST.match(raw, tail_end + 1)
    if rest is None or rest.end() != len(raw):
        return None
    return PlainTemplate(raw[:head_end], raw[closing : tail_end + 1], raw[tail_end + 1 :], key, reasoning, role)


def text_of(body: bytes) -> str:
    """The text of a matched event, from its JSON string body (without quotes)."""
    if b"\\" not in body:
        return body.decode()
    text: str = orjson.loads(b'"' + body + b'"')  # a JSON string literal
    return text
