"""A chat-completions response (SSE stream or JSON) assembled into the message(s) it carries,
the way an index-keyed client (the OpenAI SDK) would rebuild them. Used to show a response in
mitmweb and to compare what clients received before and after a policy change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from kimiwire.wire.codecs.sse import DONE, SSEDecoder
from kimiwire.wire.reasoning_keys import REASONING_KEYS


@dataclass
class AssembledCall:
    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""
    fragments: int = 0

    def as_dict(self) -> dict[str, Any]:
        try:
            arguments: Any = orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            arguments = self.arguments
        return {"id": self.id, "name": self.name, "arguments": arguments}


@dataclass
class AssembledChoice:
    index: int
    content: str = ""
    reasoning: str = ""
    reasoning_fields: set[str] = field(default_factory=set)
    tool_calls: dict[int, AssembledCall] = field(default_factory=dict)
    finish_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "reasoning": self.reasoning,
            "tool_calls": [c.as_dict() for _, c in sorted(self.tool_calls.items())],
            "finish_reason": self.finish_reason,
        }


# A body read as an event stream, a JSON completion, or neither.
BodyKind = Literal["stream", "json", "other"]


@dataclass
class AssembledResponse:
    kind: BodyKind
    choices: dict[int, AssembledChoice] = field(default_factory=dict)
    usage: Any = None
    errors: list[Any] = field(default_factory=list)
    events: int = 0
    done: bool = False

    def choice(self, index: int) -> AssembledChoice:
        if index not in self.choices:
            self.choices[index] = AssembledChoice(index)
        return self.choices[index]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "choices": [c.as_dict() for _, c in sorted(self.choices.items())],
            "usage": self.usage,
            "errors": self.errors,
            "done": self.done,
        }


def _add_text(choice: AssembledChoice, part: dict[str, Any]) -> None:
    content = part.get("content")
    if isinstance(content, str):
        choice.content += content
    for key in REASONING_KEYS:
        value = part.get(key)
        if isinstance(value, str) and value:
            choice.reasoning += value
            choice.reasoning_fields.add(key)
            break


def assemble_stream(body: bytes) -> AssembledResponse:
    decoder = SSEDecoder()
    result = AssembledResponse("stream")
    for event in decoder.feed(body) + decoder.end():
        if event.data is None:
            continue
        result.events += 1
        if event.data.strip() == DONE:
            result.done = True
            continue
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            result.errors.append(event.data.decode("utf-8", "replace"))
            continue
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            result.errors.append(chunk["error"])
        if chunk.get("usage") is not None:
            result.usage = chunk["usage"]
        for position, raw_choice in enumerate(chunk.get("choices") or []):
            if not isinstance(raw_choice, dict):
                continue
            index = raw_choice.get("index")
            choice = result.choice(index if isinstance(index, int) else position)
            delta = raw_choice.get("delta")
            if isinstance(delta, dict):
                _add_text(choice, delta)
                for tool_delta in delta.get("tool_calls") or []:
                    if not isinstance(tool_delta, dict):
                        continue
                    tool_index = tool_delta.get("index")
                    tool_index = tool_index if isinstance(tool_index, int) else 0
                    call = choice.tool_calls.setdefault(tool_index, AssembledCall(tool_index))
                    call.fragments += 1
                    call.id = call.id or tool_delta.get("id")
                    function = tool_delta.get("function") or {}
                    call.name += function.get("name") or ""
                    call.arguments += function.get("arguments") or ""
            if raw_choice.get("finish_reason"):
                choice.finish_reason = raw_choice["finish_reason"]
            if raw_choice.get("usage") is not None and result.usage is None:
                result.usage = raw_choice["usage"]
    return result


def assemble_json(body: bytes) -> AssembledResponse:
    result = AssembledResponse("json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        result.kind = "other"
        return result
    if not isinstance(data, dict):
        result.kind = "other"
        return result
    if "error" in data:
        result.errors.append(data["error"])
    result.usage = data.get("usage")
    for position, raw_choice in enumerate(data.get("choices") or []):
        if not isinstance(raw_choice, dict):
            continue
        index = raw_choice.get("index")
        choice = result.choice(index if isinstance(index, int) else position)
        message = raw_choice.get("message") or {}
        if isinstance(message, dict):
            _add_text(choice, message)
            for tool_index, call in enumerate(message.get("tool_calls") or []):
                if isinstance(call, dict):
                    function = call.get("function") or {}
                    arguments = function.get("arguments")
                    choice.tool_calls[tool_index] = AssembledCall(
                        tool_index,
                        call.get("id"),
                        function.get("name") or "",
                        arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
                        1,
                    )
        choice.finish_reason = raw_choice.get("finish_reason")
    return result


def assemble(body: bytes, content_type: str) -> AssembledResponse:
    if content_type.split(";", 1)[0].strip().lower() == "text/event-stream" or body.lstrip().startswith(b"data:"):
        return assemble_stream(body)
    return assemble_json(body)
