"""Upstream SSE streams in the shapes real Kimi servers send (see shared notes §3-4, §7)."""

from __future__ import annotations

import json
from typing import Any

import orjson

READ_ARGS = '{"path": "/tmp/probe/hello.txt"}'
EXEC_ARGS = '{"command": "ls -la /tmp/probe"}'


def fragments(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


class Stream:
    """Builds one SSE response body, event by event."""

    def __init__(self, model: str = "kimi-k2-thinking", rid: str = "chatcmpl-1") -> None:
        self.events: list[bytes] = []
        self.base = {"id": rid, "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def chunk(
        self,
        delta: dict[str, Any] | None = None,
        finish: str | None = None,
        choice_extra: dict | None = None,
        **top: Any,
    ) -> Stream:
        choice = {"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}
        choice.update(choice_extra or {})
        self.events.append(b"data: " + orjson.dumps({**self.base, "choices": [choice], **top}) + b"\n\n")
        return self

    def raw(self, data: bytes) -> Stream:
        self.events.append(data)
        return self

    def done(self) -> Stream:
        self.events.append(b"data: [DONE]\n\n")
        return self

    def body(self) -> bytes:
        return b"".join(self.events)


def tool_delta(index: int | None, call_id: Any = None, name: Any = None, arguments: Any = ..., **extra: Any):
    call: dict[str, Any] = {}
    if index is not None:
        call["index"] = index
    if call_id is not ...:
        call["id"] = call_id
    call["type"] = "function"
    function: dict[str, Any] = {}
    if name is not ...:
        function["name"] = name
    if arguments is not ...:
        function["arguments"] = arguments
    call["function"] = function
    call.update(extra)
    return {"tool_calls": [call]}


def sglang(
    calls: list[tuple[str, str]], n_fragments: int = 4, history: int = 0, reasoning: str = "Thinking."
) -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    s.chunk({"reasoning_content": reasoning})
    for i, (name, args) in enumerate(calls):
        s.chunk(tool_delta(i, f"functions.{name}:{history + i}", name, ""))
        for piece in fragments(args, n_fragments):
            s.chunk(tool_delta(i, None, None, piece))
    return s.chunk({}, "tool_calls").done()


def vllm(calls: list[tuple[str, str]], n_fragments: int = 4) -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    s.chunk({"reasoning": "Let me think."})
    for i, (name, args) in enumerate(calls):
        s.chunk(tool_delta(i, f"functions.{name}:{i}", name))  # first delta: no arguments key
        for piece in fragments(args, n_fragments):
            s.chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    return s.chunk({}, "tool_calls").done()


def moonshot(calls: list[tuple[str, str]], n_fragments: int = 4) -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    s.chunk({"reasoning_content": "Hmm."})
    for i, (name, args) in enumerate(calls):
        s.chunk(tool_delta(None, f"{name}:{i}", name, ""))
        for piece in fragments(args, n_fragments):
            s.chunk({"tool_calls": [{"function": {"arguments": piece}}]})
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return s.chunk({}, "tool_calls", choice_extra={"usage": usage}).done()


def interleaved(calls: list[tuple[str, str]], n_fragments: int = 3) -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    for i, (name, _) in enumerate(calls):
        s.chunk(tool_delta(i, f"functions.{name}:{i}", name, ""))
    pieces = [fragments(args, n_fragments) for _, args in calls]
    for k in range(max(len(p) for p in pieces)):
        for i, p in enumerate(pieces):
            if k < len(p):
                s.chunk(tool_delta(i, None, None, p[k]))
    return s.chunk({}, "tool_calls").done()


def reasoning_between_fragments(name: str, args: str) -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    s.chunk({"reasoning_content": "The user wants the file read."})
    pieces = fragments(args, 4)
    s.chunk(tool_delta(0, f"functions.{name}:0", name, ""))
    s.chunk(tool_delta(0, None, None, pieces[0]))
    s.chunk({"reasoning_content": " (still thinking)"})
    for piece in pieces[1:]:
        s.chunk(tool_delta(0, None, None, piece))
    return s.chunk({}, "tool_calls").done()


def whole_calls_in_one_chunk(calls: list[tuple[str, str]]) -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    deltas = [
        {"index": i, "id": f"functions.{n}:{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls)
    ]
    return s.chunk({"tool_calls": deltas}, "tool_calls").done()


def markup_leak(calls: list[tuple[str, str]], bare: bool = False, where: str = "content", pieces: int = 7) -> Stream:
    """The server's tool parser failed: the model's tokens arrive as text, finish_reason stop."""
    if bare:
        text = "I'll read it. " + "".join(f"functions.{n}:{i}{a}" for i, (n, a) in enumerate(calls))
    else:
        text = (
            "I'll read it. <|tool_calls_section_begin|>"
            + "".join(
                f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{a}<|tool_call_end|>"
                for i, (n, a) in enumerate(calls)
            )
            + "<|tool_calls_section_end|>"
        )
    s = Stream().chunk({"role": "assistant", "content": ""})
    for piece in fragments(text, pieces):
        s.chunk({where: piece})
    return s.chunk({}, "stop").done()


def text_answer(text: str = "All done: hello.", reasoning: str = "Summarise.") -> Stream:
    s = Stream().chunk({"role": "assistant", "content": ""})
    for piece in fragments(reasoning, 3):
        s.chunk({"reasoning_content": piece})
    for piece in fragments(text, 4):
        s.chunk({"content": piece})
    return s.chunk({}, "stop").done()


def as_args(text: str) -> dict:
    return json.loads(text)
