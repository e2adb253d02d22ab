"""The doctor's battery and how it reads an answer (sans-IO: request bodies out, answers in).

Each case is a request a harness really sends. The prompts say what to do in words a model
follows and in the simulator's script (sim/model.py: `read PATH`, `call NAME {json}`), so the
same battery runs against a real server and against the simulator.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from kimiwire.wire.servers.detection import id_form

MAX_TOKENS = 1024  # per request: room for a short reasoning and a call, a bound on the cost

READ: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "read",
        "description": "Read a file and return its text.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}
EDIT: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "edit",
        "description": "Apply text replacements to a file.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "edits": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"old": {"type": "string"}, "new": {"type": "string"}},
                        "required": ["old", "new"],
                    },
                },
            },
            "required": ["path", "edits"],
        },
    },
}
SYSTEM = "You are a coding agent. Use the tools when the user asks for files; answer briefly."
_NESTED = {"path": "/w/a.txt", "edits": [{"old": "alpha", "new": "beta"}, {"old": "gamma", "new": "delta"}]}


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    expect_calls: int  # calls a working server makes (0: a text answer)
    build: Callable[[str, list[dict[str, Any]]], dict[str, Any]]  # (model, first case's calls) -> body
    needs_calls: bool = False  # built from the server's own calls of the first case


def _body(model: str, messages: list[dict[str, Any]], tools: list[Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "max_tokens": MAX_TOKENS}
    if tools is not None:
        body["tools"] = tools
    return body | extra


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def _history(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first case's turn replayed as a harness does: the call with the server's own id, its result."""
    call = calls[0] if calls else {"id": "functions.read:0", "name": "read", "arguments": '{"path": "/w/a.txt"}'}
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "read /w/a.txt then read /w/b.txt"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "alpha gamma"},
    ]


CASES: tuple[Case, ...] = (
    Case("tool_call", "a streamed tool call", 1, lambda m, _: _body(m, _user("read /w/a.txt"), [READ])),
    Case(
        "parallel",
        "two parallel calls",
        2,
        lambda m, _: _body(m, _user("In one turn, with two parallel calls: read /w/a.txt and read /w/b.txt"), [READ]),
    ),
    Case(
        "nested",
        "a call with nested arguments",
        1,
        lambda m, _: _body(
            m,
            _user("Use the edit tool with exactly these arguments: call edit " + orjson.dumps(_NESTED).decode()),
            [EDIT],
        ),
    ),
    Case(
        "thinking_on",
        "reasoning, thinking on",
        0,
        lambda m, _: _body(m, _user("Say hello in one short sentence."), None, thinking={"type": "enabled"}),
    ),
    Case(
        "thinking_off",
        "reasoning, thinking off",
        0,
        lambda m, _: _body(m, _user("Say hello in one short sentence."), None, thinking={"type": "disabled"}),
    ),
    Case(
        "replay",
        "multi-turn replay with the server's own ids",
        1,
        lambda m, calls: _body(m, _history(calls), [READ]),
        needs_calls=True,
    ),
    Case(
        "empty_tools",
        "an empty-tools turn after tool history",
        0,
        lambda m, calls: _body(m, _history(calls), []),
        needs_calls=True,
    ),
    Case(
        "harness",
        "a request shaped as harnesses send it",
        1,
        lambda m, _: {
            "model": m,
            "messages": [
                {"role": "developer", "content": SYSTEM},
                {"role": "user", "content": "read /w/a.txt then read /w/b.txt"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        # pi-ai's id for a `functions.read:0` it was sent (non-alphanumerics dropped)
                        {
                            "id": "functionsread0",
                            "type": "function",
                            "function": {"name": "read", "arguments": '{"path": "/w/a.txt"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "functionsread0", "content": "alpha gamma"},
            ],
            "tools": [{"type": "function", "function": {**READ["function"], "strict": False}}],
            "tool_choice": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": MAX_TOKENS,
            "store": False,
        },
    ),
)

_MARKUP = re.compile(r"<\|tool_call|<\|tool_calls_section|functions\.[\w\-]+:\d+\s*\{")
_TAGS = ("<think>", "</think>")


@dataclass
class Answer:
    """What one request got back, read the way a client reads it."""

    status: int | None = None  # None: no HTTP answer at all
    error: str | None = None
    streamed: bool = False
    events: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # {id, name, arguments}
    content: str = ""
    reasoning: str = ""
    reasoning_keys: list[str] = field(default_factory=list)
    delta_shape: list[str] = field(default_factory=list)
    engine_fields: list[str] = field(default_factory=list)  # matched_stop / stop_reason seen
    error_event: bool = False
    raw: bytes = field(default=b"", repr=False)  # the body as it came

    @property
    def id_forms(self) -> list[str]:
        return sorted({id_form(c["id"]).value if c["id"] else "missing" for c in self.calls})

    @property
    def markup_leak(self) -> bool:
        return bool(_MARKUP.search(self.content)) or any(_MARKUP.search(c["arguments"]) for c in self.calls)

    @property
    def think_tags(self) -> bool:
        return any(tag in self.content for tag in _TAGS)

    @property
    def empty_turn(self) -> bool:
        return self.status == 200 and not self.error_event and not self.content.strip() and not self.calls

    @property
    def bad_arguments(self) -> int:
        bad = 0
        for call in self.calls:
            try:
                bad += not isinstance(orjson.loads(call["arguments"] or "null"), dict)
            except orjson.JSONDecodeError:
                bad += 1
        return bad

    def problems(self, case: Case) -> list[str]:
        if self.status is None:
            return [f"no answer ({self.error})"]
        if self.status != 200:
            return [f"HTTP {self.status}: {self.error or ''}".rstrip(": ")]
        found = []
        if self.error_event:
            found.append(f"error event: {self.error}")
        if self.markup_leak:
            found.append("markup leak")
        if self.think_tags:
            found.append("think tags in content")
        if self.empty_turn:
            found.append("empty turn")
        if self.bad_arguments:
            found.append(f"{self.bad_arguments} call(s) with arguments that are no JSON object")
        if case.expect_calls and len(self.calls) < case.expect_calls and not self.markup_leak:
            found.append(f"{len(self.calls)} of {case.expect_calls} call(s)")
        if self.calls and self.finish_reasons and self.finish_reasons[-1] != "tool_calls":
            found.append(f"finish_reason {self.finish_reasons[-1]} with calls")
        return found

    def as_dict(self, case: Case) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "finish_reasons": self.finish_reasons,
            "calls": len(self.calls),
            "id_forms": self.id_forms,
            "reasoning_keys": self.reasoning_keys,
            "delta_shape": self.delta_shape,
            "engine_fields": self.engine_fields,
            "markup_leak": self.markup_leak,
            "think_tags": self.think_tags,
            "empty_turn": self.empty_turn,
            "problems": self.problems(case),
        }


def read_answer(status: int, content_type: str, body: bytes) -> Answer:
    answer = Answer(status=status, raw=body)
    if status != 200:
        answer.error = _error_message(body)
        return answer
    if "text/event-stream" in content_type:
        answer.streamed = True
        _read_stream(answer, body)
    else:
        try:
            _read_choice(answer, (orjson.loads(body).get("choices") or [{}])[0], whole=True)
        except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
            answer.error = "the answer is not a chat completion"
    return answer


def _error_message(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(message := error.get("message"), str):
        return message[:200]
    if isinstance(parsed, dict) and isinstance(message := parsed.get("message"), str):
        return message[:200]
    return body[:200].decode("utf-8", "replace")


def _read_stream(answer: Answer, body: bytes) -> None:
    slots: dict[int, dict[str, Any]] = {}
    for line in body.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        answer.events += 1
        if isinstance(chunk.get("error"), dict):
            answer.error_event = True
            answer.error = str(chunk["error"].get("message", ""))[:200]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                _read_choice(answer, choice, whole=False, slots=slots)
    answer.calls = [slots[k] for k in sorted(slots)]


def _note(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _read_choice(answer: Answer, choice: dict[str, Any], whole: bool, slots: dict[int, Any] | None = None) -> None:
    for key in ("matched_stop", "stop_reason"):
        if key in choice:
            _note(answer.engine_fields, key)
    if choice.get("finish_reason"):
        answer.finish_reasons.append(str(choice["finish_reason"]))
    message = choice.get("message" if whole else "delta")
    if not isinstance(message, dict):
        return
    if isinstance(message.get("content"), str):
        answer.content += message["content"]
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            answer.reasoning += message[key]
            _note(answer.reasoning_keys, key)
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return
    if whole:
        for call in calls:
            function = call.get("function") or {}
            answer.calls.append(
                {
                    "id": call.get("id") or "",
                    "name": function.get("name") or "",
                    "arguments": function.get("arguments") or "",
                }
            )
        return
    assert slots is not None
    if not calls:
        _note(answer.delta_shape, "empty tool_calls deltas")
    for delta in calls:
        if not isinstance(delta, dict):
            continue
        function = given if isinstance(given := delta.get("function"), dict) else {}
        if "index" in delta:
            index = delta["index"]
        else:
            _note(answer.delta_shape, "no index")
            index = len(slots) - 1 if not delta.get("id") else len(slots)
        slot = slots.get(index)
        if slot is None:
            slot = slots[index] = {"id": delta.get("id") or "", "name": function.get("name") or "", "arguments": ""}
            if "arguments" not in function:
                _note(answer.delta_shape, "first delta without arguments")
            if function.get("arguments"):
                _note(answer.delta_shape, "arguments in the first delta")
        else:
            if "id" in delta and delta["id"] is None:
                _note(answer.delta_shape, "later deltas with null id")
            if isinstance(function.get("name"), str) and function["name"]:
                _note(answer.delta_shape, "name repeated")
        if isinstance(function.get("arguments"), str):
            slot["arguments"] += function["arguments"]
