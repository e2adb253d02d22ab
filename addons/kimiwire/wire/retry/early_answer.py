"""What a streaming client that was sent an early head gets when the upstream's late answer is
not an event stream (sans-IO).

An early head (`200 OK`, `text/event-stream`, sent while the upstream had sent no headers yet)
fixes the client's status and content type before the upstream's are known. A later answer that
is not an event stream is then carried in that stream as the OpenAI API itself would stream it:
- a chat completion (2xx JSON): its events (`completion_events`), as if it had been streamed;
- an error status: an OpenAI-style error event naming the upstream's status and message, `[DONE]`;
- anything else: an `upstream_error` event naming what came, `[DONE]`.
An error that the proxy answers itself (a timeout, a refused connection) becomes the same error
event: `events_for_error_body`.
"""

from __future__ import annotations

from typing import Any

import orjson

from kimiwire.wire.chat_exchanges import is_json
from kimiwire.wire.codecs.sse import DONE_EVENT
from kimiwire.wire.openai_errors import error_event
from kimiwire.wire.retry.continuation import completion_events

MAX_BODY = 1024 * 1024  # a late answer that is not a stream is kept up to this; more is not read


def _error_fields(body: bytes) -> tuple[str | None, str | None, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type")
        return (
            message if isinstance(message, str) else None,
            kind if isinstance(kind, str) else None,
            error.get("code"),
        )
    return (error if isinstance(error, str) else None), None, None


def events_for_error_body(status: int, body: bytes) -> list[bytes]:
    """An OpenAI-style JSON error body (the proxy's own, or the upstream's) as the error event and
    `[DONE]` that end a stream already under way."""
    message, kind, code = _error_fields(body)
    if message is None:
        text = body[:300].decode("utf-8", "replace").strip()
        message = f"kimiwire: the upstream answered HTTP {status}" + (f": {text}" if text else "")
    return [error_event(message, kind or "upstream_error", code if code is not None else status), DONE_EVENT]


def events_for_answer(status: int, content_type: str, body: bytes) -> list[bytes]:
    """The events of a late answer that is not an event stream (`body`: at most MAX_BODY bytes;
    a chat completion should come repaired)."""
    if 200 <= status < 300 and is_json(content_type):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("choices"), list):
            return completion_events(parsed)
    if status >= 400:
        return events_for_error_body(status, body)
    what = f"HTTP {status} {content_type or 'without a content type'}"
    message = f"kimiwire: the upstream answered {what}, not an event stream"
    return [error_event(message, "upstream_error", status), DONE_EVENT]
