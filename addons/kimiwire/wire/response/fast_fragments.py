"""The fast path for tool-call argument fragments: events that only carry a few more characters of
a call's arguments are added to the held call without parsing.

In `kimi_tool_stream=whole` mode the full path holds every call until it is complete
(tool_call_assembly.py): an event whose only delta is one fragment of a call already under way,
e.g. `{"tool_calls":[{"index":0,"function":{"arguments":"pat"}}]}` beside null fields, sends
nothing to the client; its arguments are appended to the call (`ChoiceAssembly.add_fragment`) and
the event is counted. When the full path swallowed such an event, its bytes become a template as
fast_path.py's do (head up to the arguments' opening quote, tail to the end of `choices`, the
rest), one per call index, and a later event with that head and tail and a valid JSON string as
arguments is taken here: the same `add_fragment`, the same counters, no output.

The full path would do nothing else with such an event while choice 0's repairer says so
(`ChoiceRepairer.fragments_pass`: the choice is not finished, calls are held, no field renamed,
the think-tag splitter past its reasoning) and the call stays open: its index is known (a new
index starts a call), it has not gone out (a late fragment is logged), no call before it is
ready to go out (that read would emit it), and the arguments fit under the buffer limit.

An argument fragment's text is not scanned for markup (a call's arguments are, whole, when it goes
out): `<` is allowed in it; lone surrogates, raw control characters and invalid UTF-8 are not (the
full path decides about those).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kimiwire.wire.response.fast_path import _MULTIBYTE, EVENT_REST, text_of
from kimiwire.wire.response.tool_call_assembly import CallState

if TYPE_CHECKING:
    from kimiwire.wire.response.stream_repair import StreamRepairer
    from kimiwire.wire.response.tool_call_assembly import ChoiceAssembly

# Call indexes whose fragment shape is kept per stream. Once full, no more are learned (none is
# evicted): calls whose fragments interleave, more of them than this, would otherwise evict each
# other's on every event and pay a learn per fragment on top of the full path.
MAX_FRAGMENT_TEMPLATES = 16

_OPEN = CallState.OPEN
_ARGS_ASCII = rb"[\x20\x21\x23-\x5b\x5d-\x7f]*"
_ARGS_ESCAPE = rb'\\["\\/bfnrt]|\\u(?![dD][89a-fA-F])[0-9a-fA-F]{4}'
# A JSON string's body and its closing quote: valid UTF-8, the escapes JSON allows, no raw control
# characters, no lone surrogates (`\ud800`..`\udfff` escapes go to the full path, pairs too).
ARGUMENTS_BODY = re.compile(
    _ARGS_ASCII + rb"(?:(?:" + _MULTIBYTE + rb"|" + _ARGS_ESCAPE + rb")" + _ARGS_ASCII + rb')*"'
)
ARGS_PLAIN = bytes(b for b in range(0x20, 0x80) if b not in b'"\\')
# `body.translate(ARGS_ONLY) is body` when every byte is one of ARGS_PLAIN (fast_path.PLAIN_ONLY's trick).
ARGS_ONLY = bytes(b if b in ARGS_PLAIN else (0x22 if b != 0x22 else 0x5C) for b in range(256))
_ARGUMENTS_OPENING = re.compile(rb'"arguments"[ \t]*:[ \t]*"')
_CHOICES = re.compile(rb'"choices"[ \t]*:[ \t]*\[')
_ARGUMENTS_BODY = ARGUMENTS_BODY.match
_EVENT_REST = EVENT_REST.match


@dataclass(frozen=True, slots=True)
class FragmentTemplate:
    head: bytes  # the event up to its arguments' opening quote
    tail: bytes  # from their closing quote to the `]` that closes `choices`
    rest: bytes  # after `choices` to the event's end (another event's may differ: EVENT_REST decides)
    call_index: int  # the call's upstream index (in the head)
    # What the full path sent for it: nothing, or (a delta with `role: null` is kept, so a layout
    # that writes it in every delta, SGLang's, gets the event again without its tool call) the
    # same event for every such fragment, as long as the bytes after `choices` are the same.
    output: bytes = b""
    text_start: int = 0  # len(head)
    end: bytes = b""  # tail + rest
    end_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_start", len(self.head))
        object.__setattr__(self, "end", self.tail + self.rest)
        object.__setattr__(self, "end_size", len(self.tail) + len(self.rest))


NO_FRAGMENT = FragmentTemplate(b"\0", b"\0", b"\0", -1)  # matches no event


def fragment_call_index(choice: Any) -> int | None:
    """The call index of `choice` (parsed, before any repair) when it is a lone argument fragment
    the full path only appends to a held call: choice 0, not finished, no usage or logprobs, a delta
    of null fields and one tool-call delta with an integer index, no id, no name and
    string arguments. None for anything else."""
    delta = choice.get("delta") if type(choice) is dict else None
    if type(delta) is not dict or type(calls := delta.get("tool_calls")) is not list or len(calls) != 1:
        return None  # (most events that come here: no call)
    if choice.get("index", 0) != 0 or choice.get("finish_reason") is not None:
        return None
    if "usage" in choice or choice.get("logprobs") is not None:
        return None
    for name, value in delta.items():
        if value is not None and name != "tool_calls":
            return None
    call = calls[0]
    if type(call) is not dict or call.get("id") is not None or not set(call) <= {"index", "id", "type", "function"}:
        return None
    index, function = call.get("index"), call.get("function")
    if type(index) is not int or type(function) is not dict or not set(function) <= {"name", "arguments"}:
        return None
    if function.get("name") is not None or type(function.get("arguments")) is not str:
        return None
    return index


def learn_fragment_template(raw: bytes, call_index: int, output: bytes = b"") -> FragmentTemplate | None:
    """The template of `raw`, a whole single-line event that fragment_call_index accepted; None
    when its bytes do not have the expected shape."""
    if not raw.startswith(b"data:") or not raw.endswith(b"\n\n") or raw.count(b"\n") != 2:
        return None
    choices = _CHOICES.search(raw)
    if choices is None:
        return None
    openings = list(_ARGUMENTS_OPENING.finditer(raw, choices.end()))
    if len(openings) != 1:
        return None
    head_end = openings[0].end()
    body = _ARGUMENTS_BODY(raw, head_end)
    if body is None:
        return None
    closing = body.end() - 1
    # `choices` closes at the first `]` after which only scalar fields and the event's end follow
    # (the first `]` closes `tool_calls`: a `}` follows it, then more).
    position = closing
    while (position := raw.find(b"]", position + 1)) != -1:
        rest = _EVENT_REST(raw, position + 1)
        if rest is not None and rest.end() == len(raw):
            head, tail, rest_bytes = raw[:head_end], raw[closing : position + 1], raw[position + 1 :]
            return FragmentTemplate(head, tail, rest_bytes, call_index, output)
    return None


class FragmentPath:
    """The stream repairer's fast path for argument fragments: the templates it learned and the
    answer of `refresh`, asked after each read the full path took."""

    def __init__(self, stream: StreamRepairer) -> None:
        self.stream = stream
        self.templates: list[FragmentTemplate] = []
        self.template_last = NO_FRAGMENT
        self.ready = False  # fragments of choice 0's open calls may be taken
        self.assembly: ChoiceAssembly | None = None  # choice 0's calls, while ready
        self.headroom = 0  # characters the held arguments may still grow by under the buffer limit
        # A fragment taken may have closed the last call's arguments: `StreamRepairer.tool_section_open`
        # may have changed (the adapter asks it again; nothing else does on this path).
        self.may_close = False

    def refresh(self) -> None:
        stream = self.stream
        self.ready = False
        if not (stream.fast_path and self.templates) or stream.bypass or stream.done or stream.decoder.pending:
            return
        choice = stream.choices.get(0)
        if choice is None or not choice.fragments_pass():
            return
        assembly = choice.tool_calls.assembly
        if assembly.pending and assembly.pending[0].state is not _OPEN:
            return  # the next read would hand it out
        self.assembly = assembly
        self.headroom = stream.policy.stream_buffer_limit - stream.buffered
        self.ready = True

    def read(self, data: bytes) -> list[bytes] | None:
        """When `data` is nothing but whole argument fragments of open calls matching a template:
        they are added to their calls and counted as the full path does, and what it would send
        is returned (usually nothing). None (and nothing changed) otherwise."""
        if not self.ready:
            return None
        template = self.template_last
        size = len(data)
        if data.startswith(template.head):
            start = template.text_start
            closing = size - template.end_size
            if closing >= start and data.endswith(template.end):
                body = data[start:closing]
                if body.translate(ARGS_ONLY) is body:  # plain ASCII: one event, its own end
                    return self._take([(template, body.decode())])
        return self._events(data, size)

    def _events(self, data: bytes, size: int) -> list[bytes] | None:
        position = 0
        taken: list[tuple[FragmentTemplate, str]] = []
        while position < size:
            for template in self.templates:
                if data.startswith(template.head, position):
                    break
            else:
                return None
            start = position + template.text_start
            body = _ARGUMENTS_BODY(data, start)
            if body is None:
                return None
            closing = body.end() - 1
            if not data.startswith(template.tail, closing):
                return None
            end = closing + len(template.tail)
            if data.startswith(template.rest, end):  # (the rest ends the event)
                position = end + len(template.rest)
            else:
                rest = _EVENT_REST(data, end) if not template.output else None  # (an output is the rest's)
                if rest is None:
                    return None
                position = rest.end()
            taken.append((template, text_of(data[start:closing])))
        return self._take(taken) if taken else None

    def _take(self, taken: list[tuple[FragmentTemplate, str]]) -> list[bytes] | None:
        stream = self.stream
        assembly = self.assembly
        assert assembly is not None  # (ready)
        calls = assembly.by_upstream_index
        grown = 0
        for template, text in taken:
            call = calls.get(template.call_index)
            if call is None or call.state is not _OPEN:  # a new call, or one past its arguments
                return None
            if template.output and stream.handing_over is not None:  # the gate takes parsed chunks
                return None
            grown += len(text)
        if grown > self.headroom:
            return None
        self.headroom -= grown
        last = assembly.pending[-1]  # whose open arguments `tool_section_open` looks at
        out: list[bytes] = []
        for template, text in taken:
            call = calls[template.call_index]
            assembly.add_fragment(call, text)
            if call is last and ("}" in text or "]" in text or '"' in text):
                self.may_close = True
            if template.output:
                out.append(template.output)
        self.template_last = taken[-1][0]
        events = len(taken)
        stream.events_in += events
        stream.data_events_in += events
        return out

    def learn(self, raw: bytes, call_index: int, output: bytes) -> None:
        """`raw`, a lone fragment of choice 0's call `call_index`, went the full path while
        `ChoiceRepairer.fragments_pass` held, which sent `output` for it: its shape becomes a
        template (whether a later one may be taken is `refresh`'s and `read`'s question)."""
        if len(self.templates) >= MAX_FRAGMENT_TEMPLATES:
            return
        for known in self.templates:
            if raw.startswith(known.head):
                return
        template = learn_fragment_template(raw, call_index, output)
        if template is not None:
            self.templates.append(template)
            self.template_last = template
