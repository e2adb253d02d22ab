"""OpenAI-style error payloads: what clients (the OpenAI SDKs, pi-ai) understand as errors."""

from __future__ import annotations

import orjson


def error_object(message: str, error_type: str, code: str | int | None) -> dict[str, object]:
    return {"error": {"message": message, "type": error_type, "code": code}}


def error_body(message: str, error_type: str, code: str | int | None) -> bytes:
    """A JSON response body, for an error before the response started."""
    return orjson.dumps(error_object(message, error_type, code))


def error_event(message: str, error_type: str, code: str | int | None) -> bytes:
    """An SSE event, for an error in a stream already under way (the SDKs raise APIError)."""
    return b"data: " + orjson.dumps(error_object(message, error_type, code)) + b"\n\n"
