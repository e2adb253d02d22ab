"""kimi_max_request_bytes while the request arrives, on every path the proxy serves.

Decided in the `requestheaders` hook of an HTTP/1 request: a body declared larger than the limit
(Content-Length) is answered 413 as soon as its first bytes come; a chunked body is counted as it
arrives (proxy_internals.limit_request_body) and answered the moment it passes the limit. Nothing
goes upstream, nothing of the body is kept: the rest is read and discarded so that a client that
writes its whole body before reading gets the answer, then the connection is closed. A body
within the limit (and any HTTP/2 body) is checked again after content-encoding is decoded (the
`request` hook), so a compressed bomb is never inflated past the limit.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http

from kimiwire.mitm import proxy_internals
from kimiwire.wire.openai_errors import error_body


def too_large_message(limit: int) -> str:
    return f"kimiwire: the request body is larger than {limit} bytes (kimi_max_request_bytes)"


def too_large_answer(limit: int) -> proxy_internals.ErrorAnswer:
    body = error_body(too_large_message(limit), "invalid_request_error", "request_too_large")
    return proxy_internals.ErrorAnswer(413, body, b"")


def declared_length(request: http.Request) -> int | None:
    """The body size the request declares (Content-Length), None when it declares none."""
    value = request.headers.get("content-length")
    if value is None or "chunked" in request.headers.get("transfer-encoding", "").lower():
        return None
    try:
        return int(value)
    except ValueError:
        return None  # mitmproxy refuses it itself


def enforce(flow: http.HTTPFlow, limit: int, refused: Callable[[int], None]) -> None:
    """The `requestheaders` hook's part (HTTP/1; other requests are checked in the `request` hook):
    a declared length over the limit is answered at the body's first bytes, any other body once it
    passes the limit. `refused(bytes received)` records the refusal."""
    request = flow.request
    length = declared_length(request)
    if length is not None and length <= limit:
        return  # mitmproxy reads no more than it declares
    if length is None and "chunked" not in request.headers.get("transfer-encoding", "").lower():
        return  # no body
    refuse_after = -1 if length is not None else limit
    proxy_internals.limit_request_body(flow, refuse_after, too_large_answer(limit), refused)
