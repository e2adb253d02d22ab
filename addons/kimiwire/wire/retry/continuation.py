"""A retry's repaired stream, continued into the response the client already has (sans-IO).

The client keeps one response: one role chunk, one `[DONE]`, one chunk id. A retry's events are
rewritten so they read as the rest of the first attempt: the chunk-level `id`, `created`, `model`
and `system_fingerprint` become the first attempt's, and the role goes once (a chunk left with
nothing but the role, or the role and an empty content, is dropped). Tool-call indexes and ids
need nothing: every attempt gets a fresh repairer, which numbers calls from 0 and gives them the
canonical ids of the request's history, exactly as the first attempt would have.

Reasoning that already reached the client (a reasoning-only first attempt) stays; the retry's
reasoning follows it after a blank line, so the client's assembled message holds both, then the
retry's answer (pi-ai 0.67.68, OpenClaw's parser, shows them as one thinking block).
"""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.codecs.sse import DONE_EVENT, SSEDecoder, encode_data
from kimiwire.wire.reasoning_keys import REASONING_KEYS


class Continuation:
    def __init__(self, template: dict[str, Any], role_delivered: bool, reasoning_delivered: bool = False) -> None:
        self.template = dict(template)
        self.role_delivered = role_delivered
        self.separate_reasoning = reasoning_delivered
        self._decoder = SSEDecoder()

    def rewrite(self, events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            for sse in self._decoder.feed(event):
                if sse.data is None:
                    out.append(sse.raw)
                    continue
                try:
                    chunk = orjson.loads(sse.data)
                except orjson.JSONDecodeError:
                    out.append(sse.raw)
                    continue
                if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
                    out.append(sse.raw)
                    continue
                kept = self._chunk(chunk)
                if kept is not None:
                    out.append(encode_data(orjson.dumps(kept)))
        return out

    def _chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        if not self.template:
            self.template = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        chunk.update(self.template)
        choices: list[Any] = []
        for choice in chunk["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and self.separate_reasoning:
                for key in REASONING_KEYS:
                    if isinstance(delta.get(key), str) and delta[key]:
                        delta[key] = "\n\n" + delta[key]
                        self.separate_reasoning = False
                        break
            if isinstance(delta, dict) and "role" in delta:
                if self.role_delivered:
                    del delta["role"]
                    empty = all(value in (None, "") for value in delta.values())
                    if empty and choice.get("finish_reason") is None and not choice.get("logprobs"):
                        continue
                else:
                    self.role_delivered = True
            choices.append(choice)
        if not choices and chunk.get("usage") is None and chunk["choices"]:
            return None
        chunk["choices"] = choices
        return chunk


def completion_events(body: dict[str, Any]) -> list[bytes]:
    """A (repaired) non-streamed chat completion as the stream a server would have sent: role,
    reasoning, content, each tool call as OpenAI streams it (a first delta with its id, name and
    `arguments: ""`, then its arguments), the finish
    chunk, usage, [DONE]. For retries sent non-streamed (`kimi_retry_stream=false`, vllm#54701)."""
    base: dict[str, Any] = {k: body[k] for k in ("id", "created", "model", "system_fingerprint") if k in body}
    base["object"] = "chat.completion.chunk"
    events: list[bytes] = []

    def emit(index: int, delta: dict[str, Any], finish: Any = None) -> None:
        chunk = {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
        events.append(encode_data(orjson.dumps(chunk)))

    for position, choice in enumerate(body.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = given if isinstance(given := choice.get("index"), int) else position
        message = given if isinstance(given := choice.get("message"), dict) else {}
        emit(index, {"role": message.get("role") or "assistant", "content": ""})
        for key in REASONING_KEYS:
            if isinstance(message.get(key), str) and message[key]:
                emit(index, {key: message[key]})
        if isinstance(message.get("content"), str) and message["content"]:
            emit(index, {"content": message["content"]})
        for number, call in enumerate(message.get("tool_calls") or []):
            if not isinstance(call, dict):
                continue
            # as OpenAI streams a call: id, type, name and `arguments: ""` first, then the arguments
            function = given if isinstance(given := call.get("function"), dict) else {}
            head = {"index": number, "id": call.get("id"), "type": call.get("type") or "function"}
            emit(index, {"tool_calls": [{**head, "function": {"name": function.get("name"), "arguments": ""}}]})
            if function.get("arguments"):
                emit(index, {"tool_calls": [{"index": number, "function": {"arguments": function["arguments"]}}]})
        emit(index, {}, choice.get("finish_reason") or "stop")
    if body.get("usage") is not None:
        events.append(encode_data(orjson.dumps({**base, "choices": [], "usage": body["usage"]})))
    events.append(DONE_EVENT)
    return events
