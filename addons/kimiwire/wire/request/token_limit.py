"""A `max_tokens` the upstream refuses because prompt plus completion exceed the model's context,
clamped to the room its error states (sans-IO): the request is then sent once more.

The limits as servers state them (each with its source):
- Moonshot: `exceeded model token limit: L (requested: R)`, R = prompt + max_tokens (MoonshotAI/kimi-cli#2011);
- vLLM: `maximum context length is L tokens ... your request has P input tokens` or
  `... you requested R tokens (P in the messages, C in the completion)` (BerriAI/litellm#22478);
- Groq: `max_tokens` `must be less than or equal to N` (Kilo-Org/kilocode#1332).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_MOONSHOT = re.compile(r"exceeded model token limit: (\d+) \(requested: (\d+)\)")
_VLLM_INPUT = re.compile(
    r"maximum context length is (\d+) tokens.{0,80}?(?:request has|requested) (\d+) input tokens", re.S
)
_VLLM_MESSAGES = re.compile(r"maximum context length is (\d+) tokens.{0,120}?\((\d+) in the messages", re.S)
_GROQ = re.compile(r"max_tokens`? must be less than or equal to `?(\d+)")
_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class Clamped:
    body: bytes
    field: str
    before: int
    after: int
    stated: str  # the limit as the upstream stated it


def _message(error_body: bytes) -> str:
    try:
        parsed: Any = orjson.loads(error_body)
    except orjson.JSONDecodeError:
        return error_body[:2000].decode("utf-8", "replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    # A gateway (OpenRouter) wraps the provider's own error in `error.metadata.raw`.
    metadata = error.get("metadata") if isinstance(error, dict) else None
    raw = metadata.get("raw") if isinstance(metadata, dict) else None
    return " ".join(text for text in (message, raw) if isinstance(text, str))


def _room(message: str, requested: int) -> tuple[int, str] | None:
    """The completion tokens the stated limit leaves, and the statement."""
    if found := _MOONSHOT.search(message):
        limit, total = int(found[1]), int(found[2])
        return limit - (total - requested), found[0]
    for pattern in (_VLLM_INPUT, _VLLM_MESSAGES):
        if found := pattern.search(message):
            return int(found[1]) - int(found[2]), found[0]
    if found := _GROQ.search(message):
        return int(found[1]), found[0]
    return None


def clamp_max_tokens(error_body: bytes, request_body: bytes) -> Clamped | None:
    """The request with its `max_tokens` lowered to the room the error states, or None (no stated
    limit, no field to lower, or no room left: the error then reaches the client as it came)."""
    if not error_body or b"token" not in error_body:
        return None
    try:
        body = orjson.loads(request_body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    field = next((f for f in _FIELDS if type(body.get(f)) is int), None)
    if field is None:
        return None
    requested = body[field]
    room = _room(_message(error_body), requested)
    if room is None or not 0 < room[0] < requested:
        return None
    body[field] = room[0]
    return Clamped(orjson.dumps(body), field, requested, room[0], room[1])
