"""Kimi K3's markup ("XTML"): its grammar as data, and the decoding of one element or tools section.

K3 writes channels and tool calls with three special tokens, `<|open|>`, `<|close|>` and
`<|sep|>`, and plain-text tag headers (vLLM `vllm/tool_parsers/kimi_k3_tool_parser.py` and
`vllm/reasoning/kimi_k3_reasoning_parser.py`; SGLang `python/sglang/srt/function_call/
kimik3_detector.py`, `kimik3_format.py`; TensorRT-LLM's `KimiK3ToolParser`, which names the
checkpoint's `encoding_k3.py` as the authority):

    <|open|>think<|sep|>REASONING<|close|>think<|sep|>
    <|open|>response<|sep|>ANSWER<|close|>response<|sep|>
    <|open|>tools<|sep|>
      <|open|>call tool="NAME" index="1"<|sep|>
        <|open|>argument key="K" type="string|number|boolean|null|object|array"<|sep|>VALUE<|close|>argument<|sep|>
      <|close|>call<|sep|>
      <|open|>call tool="NAME" index="2"<|sep|>
        <|open|>json type="object"<|sep|>{...}<|close|>json<|sep|>
      <|close|>call<|sep|>
    <|close|>tools<|sep|>
    <|close|>message<|sep|><|end_of_msg|>

Attribute values escape `&` and `"` (`&amp;`, `&quot;`); a `type="string"` value is the raw
text, any other type JSON text (kept raw when it does not parse, as the engines do); a call body
is argument blocks or one `json` block (TensorRT-LLM; SGLang and vLLM know only arguments).
Indexes count from 1 within a message. The template prefills `<|open|>think<|sep|>` (or
`<|open|>response<|sep|>` with thinking off), so output often starts inside a channel and only
closes it. A detokenizer that spaces special tokens writes `<|open|> tools <|sep|>`: vLLM's
parsers accept whitespace inside a marker, and so does this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

OPEN = "<|open|>"
CLOSE = "<|close|>"
SEP = "<|sep|>"
END_OF_MSG = "<|end_of_msg|>"
TOKENS = (OPEN, CLOSE, SEP, END_OF_MSG)
TOKEN_START = "<|"
HEADER_LIMIT = 1024  # the longest tag header waited for (`call tool="…" index="…"`)


class Channel(Enum):
    THINK = "think"
    RESPONSE = "response"
    TOOLS = "tools"
    MESSAGE = "message"
    CALL = "call"
    ARGUMENT = "argument"
    JSON = "json"


# `<|open|>NAME attrs<|sep|>` / `<|close|>NAME<|sep|>`, spaced or not.
_ELEMENT = re.compile(
    r"<\|(?P<kind>open|close)\|>\s*(?P<name>[a-z_]*)(?P<attrs>(?:(?!<\|).){0," + str(HEADER_LIMIT) + r"}?)\s*<\|sep\|>",
    re.S,
)
_ATTR = re.compile(r'(?P<k>\w+)="(?P<v>[^"]*)"')
_TOOLS_CLOSE = re.compile(r"<\|close\|>\s*tools\s*<\|sep\|>")
_SECTION_ENDS = re.compile(r"<\|close\|>\s*(?:tools|message)\s*<\|sep\|>|<\|end_of_msg\|>")
_CALL = re.compile(
    r"<\|open\|>\s*call(?P<attrs>(?:(?!<\|).)*?)<\|sep\|>(?P<body>.*?)<\|close\|>\s*call\s*<\|sep\|>",
    re.S,
)
_CALL_OPEN = re.compile(r"<\|open\|>\s*call(?![a-z])")
_ARGUMENT = re.compile(
    r"<\|open\|>\s*argument(?P<attrs>(?:(?!<\|).)*?)<\|sep\|>(?P<value>.*?)<\|close\|>\s*argument\s*<\|sep\|>",
    re.S,
)
_JSON_BLOCK = re.compile(
    r"<\|open\|>\s*json(?P<attrs>(?:(?!<\|).)*?)<\|sep\|>(?P<value>.*?)<\|close\|>\s*json\s*<\|sep\|>", re.S
)


def attributes(header: str) -> dict[str, str]:
    """A tag header's attributes, unescaped (`&quot;` before `&amp;`: the reverse of encoding)."""
    return {m["k"]: m["v"].replace("&quot;", '"').replace("&amp;", "&") for m in _ATTR.finditer(header)}


@dataclass(frozen=True, slots=True)
class Element:
    opens: bool
    channel: Channel | None  # None: a name K3 does not use
    attrs: str
    end: int  # index after the element


class Scan(Enum):
    WAIT = "wait"  # may still become an element: more text decides
    NONE = "none"  # not K3 markup


def could_start(text: str, at: int) -> bool:
    """Whether `text[at:]` (which starts with `<|`) starts a K3 token or may still become one."""
    rest = text[at : at + 16]
    return any(rest.startswith(token) or (len(rest) < len(token) and token.startswith(rest)) for token in TOKENS)


def element_at(text: str, at: int, final: bool) -> Element | tuple[str, int] | Scan:
    """What starts at `at`: an element, a bare token (`<|end_of_msg|>`, a stray `<|sep|>`) as
    (token, end), WAIT when only more text can tell, NONE when it is not K3 markup."""
    for token in (END_OF_MSG, SEP):
        if text.startswith(token, at):
            return token, at + len(token)
    if not (text.startswith(OPEN, at) or text.startswith(CLOSE, at)):
        return Scan.NONE if final or not could_start(text, at) else Scan.WAIT
    match = _ELEMENT.match(text, at)
    if match is None:
        sep = text.find(SEP, at)
        if not final and sep == -1 and len(text) - at < HEADER_LIMIT + 32:
            return Scan.WAIT
        return Scan.NONE
    if not match["name"]:  # `<|close|><|sep|>`: a close without a name, removed like a stray marker
        return (CLOSE + SEP, match.end()) if match["kind"] == "close" and not match["attrs"].strip() else Scan.NONE
    try:
        channel: Channel | None = Channel(match["name"])
    except ValueError:
        channel = None
    return Element(match["kind"] == "open", channel, match["attrs"], match.end())


def section_end(text: str, start: int) -> tuple[int, int] | None:
    """(where the tools section that opened before `start` ends, after its closing marker), or None
    when it has not ended yet. A message close or `<|end_of_msg|>` also ends it (the section is
    the message's last channel)."""
    match = _SECTION_ENDS.search(text, start)
    if match is None:
        return None
    return match.start(), match.end() if _TOOLS_CLOSE.match(match.group()) else match.start()


@dataclass(frozen=True, slots=True)
class K3Call:
    name: str
    index: str  # the model's `index` attribute, as written ("" when absent)
    arguments: str  # a JSON object text, as vLLM and SGLang build it (json.dumps defaults)
    exact: bool  # every value decoded as its type says (else a value was kept as raw text)


def _dumps(value: Any) -> str:
    """As vLLM, SGLang and TensorRT-LLM write arguments: `json.dumps(value, ensure_ascii=False)`."""
    return json.dumps(value, ensure_ascii=False)


def decode_call(attrs: str, body: str) -> K3Call | None:
    """One call block, or None without a tool name (the engines drop such a block)."""
    call_attrs = attributes(attrs)
    name = call_attrs.get("tool", "")
    if not name:
        return None
    exact = True
    block = _JSON_BLOCK.search(body)
    if block is not None:
        raw = block["value"].strip()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return K3Call(name, call_attrs.get("index", ""), raw, False)
        if not isinstance(value, dict):
            return K3Call(name, call_attrs.get("index", ""), raw, False)
        return K3Call(name, call_attrs.get("index", ""), _dumps(value), True)
    arguments: dict[str, Any] = {}
    for argument in _ARGUMENT.finditer(body):
        argument_attrs = attributes(argument["attrs"])
        key = argument_attrs.get("key", "")
        kind = argument_attrs.get("type", "string")
        raw = argument["value"]
        if kind == "string":
            arguments[key] = raw
            continue
        try:
            arguments[key] = json.loads(raw)
        except json.JSONDecodeError:
            arguments[key] = raw
            exact = False
    return K3Call(name, call_attrs.get("index", ""), _dumps(arguments), exact)


@dataclass(frozen=True, slots=True)
class Section:
    calls: list[K3Call]
    incomplete: bool  # a call block opened and never closed (the output was cut inside it)


def decode_section(section: str) -> Section:
    """The calls of a tools section's inside (between its open and close markers)."""
    calls = [call for m in _CALL.finditer(section) if (call := decode_call(m["attrs"], m["body"])) is not None]
    opened = len(_CALL_OPEN.findall(section))
    closed = sum(1 for _ in _CALL.finditer(section))
    return Section(calls, opened > closed)


def holdback(text: str) -> int:
    """Length of the end of `text` that may be the start of a K3 token."""
    at = text.rfind(TOKEN_START, max(0, len(text) - 16))
    if at == -1:
        return 1 if text.endswith("<") else 0
    return len(text) - at if could_start(text, at) else (1 if text.endswith("<") else 0)


def last_call_end(text: str, start: int, end: int) -> int:
    """Where the last complete call block between `start` and `end` ends (`start` when none)."""
    last = start
    for match in _CALL.finditer(text, start, end):
        last = match.end()
    return last
