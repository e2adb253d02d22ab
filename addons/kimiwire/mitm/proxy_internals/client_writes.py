"""Writing to an HTTP/1 or HTTP/2 client from outside mitmproxy's own flow of events (techniques 2
and 5 of the package): body chunks while a flow waits in its `response` hook, raw bytes while it
waits in its `error` hook, and an early event-stream head while it waits for the upstream's head."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import Enum
from types import MethodType
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from kimiwire.mitm.proxy_internals.core import Outcome, handler_of, locate, run_inside, usable
from kimiwire.mitm.proxy_internals.early_heads import early_head, is_early_head, remember_early_head
from kimiwire.mitm.proxy_internals.error_answers import answering_send

try:
    from mitmproxy.proxy import commands
    from mitmproxy.proxy.layers.http import SendHttp
    from mitmproxy.proxy.layers.http._events import ResponseData
    from mitmproxy.proxy.layers.http._http1 import Http1Server
except ImportError:  # pragma: no cover - only on an unverified mitmproxy (core.problems says so)
    pass


class SendKind(Enum):
    SENT = "sent"
    NOTHING = "nothing"  # no bytes to send
    GONE = "gone"  # the client or the flow went away
    REFUSED = "refused"  # the flow is not waiting at the end of a stream; detail: why


SendOutcome = Outcome  # of send_to_client: kind is a SendKind


async def send_to_client(flow: http.HTTPFlow, chunks: list[bytes]) -> SendOutcome:
    """Send body chunks of a streamed response to the client while the flow waits in its
    `response` hook (after `stream(b"")`, before mitmproxy ends the body)."""
    data = [chunk for chunk in chunks if chunk]  # an empty chunk would end a chunked body
    if not data:
        return SendOutcome(SendKind.NOTHING)
    found = _writable_stream(flow, http1_only=False)
    if isinstance(found, SendOutcome):
        return found
    handler, http_layer, stream_id = found
    outcome: list[SendOutcome] = []

    def body() -> Iterator[Any]:
        stream = http_layer.streams.get(stream_id)
        if stream is None or stream.flow is not flow or flow.client_conn not in http_layer.connections:
            outcome.append(SendOutcome(SendKind.GONE))
            return
        if stream.server_state != stream.state_stream_response_body:  # not waiting at the end of a stream
            state = getattr(stream.server_state, "__name__", "?")
            outcome.append(SendOutcome(SendKind.REFUSED, f"stream in {state}"))
            return
        outcome.append(SendOutcome(SendKind.SENT))
        for chunk in data:
            yield SendHttp(ResponseData(stream_id, chunk), flow.client_conn)

    return await _sent(handler, http_layer, body, outcome)


async def send_raw_to_client(flow: http.HTTPFlow, data: bytes) -> SendOutcome:
    """Write bytes straight to an HTTP/1 client whose flow waits in its `error` hook and that has
    been sent no response yet (a retry after a failure before response headers, answered as it
    comes: the caller writes the status line and headers, then chunks). The answer registered
    with `raw_sent` then only closes the connection."""
    if not data:
        return SendOutcome(SendKind.NOTHING)
    found = _writable_stream(flow)
    if isinstance(found, SendOutcome):
        return found
    handler, http_layer, stream_id = found
    outcome: list[SendOutcome] = []

    def body() -> Iterator[Any]:
        stream = http_layer.streams.get(stream_id)
        server = http_layer.connections.get(flow.client_conn)
        if stream is None or stream.flow is not flow or server is None:
            outcome.append(SendOutcome(SendKind.GONE))
            return
        if not isinstance(server, Http1Server) or server.response_done:
            outcome.append(SendOutcome(SendKind.REFUSED, "not an open HTTP/1 response"))
            return
        if server.response is not None and not is_early_head(flow.client_conn.id, server.response):
            outcome.append(SendOutcome(SendKind.REFUSED, "a response was sent already"))
            return
        outcome.append(SendOutcome(SendKind.SENT))
        yield commands.SendData(flow.client_conn, data)

    return await _sent(handler, http_layer, body, outcome)


async def send_early_head(flow: http.HTTPFlow) -> SendOutcome:
    """Send an HTTP/1 client whose flow still waits for the upstream's response headers a `200 OK`
    event-stream head now; the upstream's head, when it comes, does not reach the client (the body
    goes on in the chunks begun). Later chunks: `send_raw_to_client` until the upstream's head,
    mitmproxy's own ResponseData after it."""
    found = _writable_stream(flow)
    if isinstance(found, SendOutcome):
        return found
    handler, http_layer, stream_id = found
    outcome: list[SendOutcome] = []

    def body() -> Iterator[Any]:
        from mitmproxy.net.http import http1

        stream = http_layer.streams.get(stream_id)
        server = http_layer.connections.get(flow.client_conn)
        if stream is None or stream.flow is not flow or server is None or flow.response is not None:
            outcome.append(SendOutcome(SendKind.GONE))
            return
        if isinstance(server, Http1Server) and is_early_head(flow.client_conn.id, server.response):
            outcome.append(SendOutcome(SendKind.SENT))  # sent already (the early head and a retry met)
            return
        if not isinstance(server, Http1Server) or server.response is not None or server.stream_id != stream_id:
            outcome.append(SendOutcome(SendKind.REFUSED, "a response was sent already"))
            return
        head = early_head()
        server.response = head
        remember_early_head(flow.client_conn.id, head)
        server.send = MethodType(answering_send, server)  # type: ignore[method-assign]  # one connection's own send
        outcome.append(SendOutcome(SendKind.SENT))
        yield commands.SendData(flow.client_conn, http1.assemble_response_head(head))

    return await _sent(handler, http_layer, body, outcome)


def _writable_stream(flow: http.HTTPFlow, http1_only: bool = True) -> tuple[Any, Any, int] | SendOutcome:
    """The proxy handler, HTTP layer and stream id of a client that can still be written to (an
    HTTP/1 client unless `http1_only` is off), or why there is none (what a send then answers)."""
    if not usable():
        return SendOutcome(SendKind.REFUSED, "mitmproxy internals not usable")
    if http1_only and not flow.request.http_version.startswith("HTTP/1"):
        return SendOutcome(SendKind.REFUSED, "not an HTTP/1 client")
    if not flow.client_conn.state & ConnectionState.CAN_WRITE:
        return SendOutcome(SendKind.GONE)
    handler = handler_of(flow)
    found = locate(handler, flow) if handler is not None else None
    if found is None:
        return SendOutcome(SendKind.GONE)
    http_layer, stream_id = found
    return handler, http_layer, stream_id


async def _sent(
    handler: Any, http_layer: Any, body: Callable[[], Iterator[Any]], outcome: list[SendOutcome]
) -> SendOutcome:
    """Run a send's `body` inside mitmproxy's HTTP layer: what the body decided, or GONE when it
    could not run there (the connection went away first)."""
    ran = await run_inside(handler, http_layer, body)
    if outcome:
        return outcome[0]
    return SendOutcome(SendKind.GONE) if not ran else SendOutcome(SendKind.REFUSED, "no outcome")
