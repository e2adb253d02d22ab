"""The event-stream heads kimiwire sent HTTP/1 clients itself (technique 5 of the package), by
client connection: the answering send drops the upstream's head of such a stream and closes it
with an error event when the upstream fails."""

from __future__ import annotations

from typing import Any

from mitmproxy import http

_EARLY_HEADS: dict[Any, http.Response] = {}  # client connection id -> the head it was sent


def early_head() -> http.Response:
    """The head of a first-time success's event stream (HTTP/1.1, chunked, the connection closes after)."""
    return http.Response.make(
        200,
        b"",
        [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"transfer-encoding", b"chunked"),
            (b"connection", b"close"),
        ],
    )


def remember_early_head(client_conn_id: Any, head: http.Response) -> None:
    _EARLY_HEADS[client_conn_id] = head


def is_early_head(client_conn_id: Any, response: http.Response | None) -> bool:
    """Whether `response`, the head a client connection has, is the early head kimiwire sent it."""
    return response is not None and response is _EARLY_HEADS.get(client_conn_id)


def forget_early_head(client_conn_id: Any) -> None:
    _EARLY_HEADS.pop(client_conn_id, None)


def early_heads() -> int:
    return len(_EARLY_HEADS)
