"""Counting an HTTP/1 request body as it arrives (technique 4 of the package): past a limit the client
is answered at once and the rest of the body is read and thrown away."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import http

from kimiwire.mitm.proxy_internals.core import handler_of, locate, usable
from kimiwire.mitm.proxy_internals.error_answers import ErrorAnswer

try:
    from mitmproxy.proxy import commands
    from mitmproxy.proxy.layers.http._events import RequestData, RequestEndOfMessage, RequestProtocolError
except ImportError:  # pragma: no cover - only on an unverified mitmproxy (core.problems says so)
    pass


def limit_request_body(flow: http.HTTPFlow, limit: int, answer: ErrorAnswer, refused: Callable[[int], None]) -> bool:
    """From the `requestheaders` hook of an HTTP/1 request: count its body as it arrives and, once
    more than `limit` bytes came (at once for a negative limit), answer it now: the buffered part
    is dropped, `answer` goes to the client (connection: close) and `refused(bytes received)` runs.
    The rest of the body is read and discarded (a client that writes its whole body before reading,
    as most do, then reads the answer instead of blocking on a socket nobody reads) up to `limit`
    more bytes, then the connection is closed. False when the flow's stream cannot be found."""
    if not usable() or not flow.request.http_version.startswith("HTTP/1"):
        return False
    handler = handler_of(flow)
    found = locate(handler, flow) if handler is not None else None
    if found is None:
        return False
    http_layer, stream_id = found
    stream = http_layer.streams[stream_id]
    mitmproxy_handle = stream._handle_event
    received = 0
    answered = False

    def counting(event: Any) -> Iterator[Any]:
        nonlocal received, answered
        kind = type(event)
        if kind is RequestData:
            received += len(event.data)
            if answered:
                if received > 2 * max(limit, 0) + (1 << 20):  # enough politeness: a client writing on is cut off
                    yield commands.CloseConnection(flow.client_conn)
                return
            if received > limit:
                answered = True
                stream.request_body_buf = bytearray()  # its memory returns now, not when the connection goes
                stream.client_state = stream.server_state = stream.state_errored
                flow.live = False
                refused(received)
                yield commands.SendData(flow.client_conn, _assembled(answer))
                return
        elif answered:
            if kind is RequestEndOfMessage or kind is RequestProtocolError:
                yield commands.CloseConnection(flow.client_conn)
            return
        yield from mitmproxy_handle(event)

    stream._handle_event = counting
    return True


def _assembled(answer: ErrorAnswer) -> bytes:
    from mitmproxy.net.http import http1

    response = http.Response.make(
        answer.status, answer.body, {"content-type": answer.content_type, "connection": "close"}
    )
    assembled: bytes = http1.assemble_response(response)  # (mitmproxy leaves it unannotated)
    return assembled
