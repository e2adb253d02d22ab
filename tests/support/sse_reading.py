"""Reading a chat-completions stream's body in tests: every choice of every JSON chunk (Python's
json, as the clients the tests model use; `[DONE]` and data-less events passed over), the finish
reasons they carry and the text they add up to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kimiwire.wire.codecs.sse import SSEDecoder


def choices(body: bytes) -> Iterator[dict[str, Any]]:
    decoder = SSEDecoder()
    for event in decoder.feed(body) + decoder.end():
        if event.data and event.data != b"[DONE]":
            yield from json.loads(event.data).get("choices") or []


def finish_reasons(body: bytes) -> list[str]:
    """Every finish reason the stream sends, in order (a well-formed stream sends one a choice)."""
    return [choice["finish_reason"] for choice in choices(body) if choice.get("finish_reason")]


def content(body: bytes) -> str:
    return "".join((choice.get("delta") or {}).get("content") or "" for choice in choices(body))
