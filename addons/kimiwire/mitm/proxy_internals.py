"""The only module that touches mitmproxy's private proxy core (verified on 12.2.x).

mitmproxy gives an addon no public way to end a streamed response while the upstream is silent,
nor to write to a client while its flow waits in a hook, nor to count a request body as it arrives,
nor to answer an upstream failure with anything but its own HTML error page, nor to answer a client before
the upstream's headers came. Five techniques:

1. Ending a stream: one synthetic event is fed into the flow's connection handler. Inside the
   HttpLayer it plays the upstream connection: the upstream parser is detached from the stream,
   then `ResponseEndOfMessage` makes mitmproxy itself call `stream(b"")` (the repairer's flush),
   run the `response` hook and end the client body (chunked terminator or HTTP/2 END_STREAM);
   then the upstream is cancelled (HTTP/1 connection closed, HTTP/2 RST_STREAM on that stream).
   Every precondition is checked inside that event, serialized with real IO.
2. Writing to a client while its flow waits in the `response` hook (retries): once the
   upstream body has ended, mitmproxy calls `stream(b"")`, then awaits the `response` hook, and
   only then ends the client's body. The same synthetic event, run inside the HttpLayer, sends
   `ResponseData` for the flow's stream straight to the client connection's layer (chunked on
   HTTP/1, DATA frames on HTTP/2); only the HttpStream waits for the hook, not the HttpLayer.
3. Error responses: a client connection for which kimiwire registers an answer gets its own
   `send` (the Http1Server instance's attribute over the class's method), so that a protocol error
   there sends that answer (an OpenAI-style JSON error before the response started, or the closing
   events of a stream already under way); other connections keep mitmproxy's send untouched.
4. Counting a request body as it arrives: the flow's HttpStream gets its own `_handle_event` (the
   instance's attribute over the class's method) that counts `RequestData` and, past a limit,
   answers the client itself and discards the rest (mitmproxy's `body_size_limit` would apply to
   every response too; and an answer followed by mitmproxy's CloseConnection while the client was
   still writing left the socket ESTABLISHED with a full receive queue, seen with `ss`, so the
   client blocked until its own write timeout instead of reading the answer).
5. An early head: an HTTP/1 client of a streamed request still waiting for the upstream's headers
   is sent a `200 OK` event-stream head (chunked) from inside the HttpLayer, and its Http1Server
   gets that head as its `response` (so mitmproxy frames every later `ResponseData` as chunks and
   ends the body with the chunked terminator) and the answering `send`, which also drops the
   `ResponseHeaders` of that stream when the upstream's head comes: the client has had its head.

When a precondition fails, callers fall back to closing the connections at once, so a client
errors promptly instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from types import MethodType
from typing import Any

from mitmproxy import ctx, http, version
from mitmproxy.connection import ConnectionState

from kimiwire.wire.early_answer import events_for_error_body
from kimiwire.wire.openai_errors import error_body
from kimiwire.wire.redaction import url_for_log

logger = logging.getLogger("kimiwire")

VERIFIED_VERSIONS = ("12.2.",)

try:
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy import layer as proxy_layer
    from mitmproxy.proxy.layers.http import HttpLayer, SendHttp
    from mitmproxy.proxy.layers.http._base import HttpEvent, ReceiveHttp
    from mitmproxy.proxy.layers.http._events import (
        ErrorCode,
        RequestData,
        RequestEndOfMessage,
        RequestProtocolError,
        ResponseData,
        ResponseEndOfMessage,
        ResponseHeaders,
        ResponseProtocolError,
    )
    from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Connection, Http1Server
    from mitmproxy.proxy.layers.http._http2 import Http2Client
    from mitmproxy.proxy.layers.http._http2 import StreamState as Http2StreamState

    _MITMPROXY_SEND = Http1Server.send
    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only on an unverified mitmproxy
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def problems() -> list[str]:
    """What no longer fits in this mitmproxy (empty when every technique can be used)."""
    found: list[str] = []
    if not version.VERSION.startswith(VERIFIED_VERSIONS):
        found.append(f"mitmproxy {version.VERSION} is not a verified version ({', '.join(VERIFIED_VERSIONS)}x)")
    if _IMPORT_ERROR:
        return [*found, f"private imports failed: {_IMPORT_ERROR}"]
    required: list[tuple[Any, str]] = [
        (HttpLayer, "_handle_event"),
        (Http1Client, "read_body"),
        (Http1Client, "done"),
        (Http1Server, "send"),
        (proxy_layer.Layer, "_handle_event"),
        (events.CommandCompleted, "command"),
    ]
    for owner, name in required:
        if not hasattr(owner, name) and name not in getattr(owner, "__annotations__", {}):
            found.append(f"{owner.__name__}.{name} is missing")
    probe = HttpLayer.__init__.__code__.co_names
    for name in ("streams", "connections", "command_sources"):
        if name not in probe:
            found.append(f"HttpLayer no longer sets .{name}")
    if "send" not in Http1Connection._handle_event.__code__.co_names:
        found.append("Http1Connection._handle_event no longer calls self.send")
    if not {"response", "response_done", "stream_id"} <= set(Http1Connection.__annotations__) | set(
        Http1Server.__annotations__
    ):
        found.append("Http1Server no longer keeps .response, .response_done and .stream_id")
    if "response" not in Http1Server.send.__code__.co_names:
        found.append("Http1Server.send no longer frames its body by .response")
    if "our_stream_id" not in Http2Client.__init__.__code__.co_names:
        found.append("Http2Client no longer sets .our_stream_id")
    return found


_PROBLEMS: list[str] | None = None


def usable() -> bool:
    global _PROBLEMS
    if _PROBLEMS is None:
        _PROBLEMS = problems()
        for problem in _PROBLEMS:
            logger.warning("kimiwire: %s; streams that must be cut short will be closed instead", problem)
    return not _PROBLEMS


# -- finding a flow's place in the layer tree -------------------------------------------------


def _handler(flow: http.HTTPFlow) -> Any:
    server = ctx.master.addons.get("proxyserver")
    connections = getattr(server, "connections", None) if server is not None else None
    return connections.get(flow.client_conn.id) if isinstance(connections, dict) else None


def _layers(root: Any) -> Iterator[Any]:
    seen: set[int] = set()
    todo = [root]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, HttpLayer):
            continue
        for attribute in ("layer", "child_layer"):  # NextLayer.layer; modes, tunnels: .child_layer
            child = current.__dict__.get(attribute)
            if isinstance(child, proxy_layer.Layer):
                todo.append(child)


def _locate(handler: Any, flow: http.HTTPFlow) -> tuple[Any, int] | None:
    for current in _layers(handler.layer):
        if isinstance(current, HttpLayer):
            for stream_id, stream in current.streams.items():
                if getattr(stream, "flow", None) is flow:
                    return current, stream_id
    return None


def _upstream_parser(http_layer: Any, flow: http.HTTPFlow) -> Any:
    parser = http_layer.connections.get(flow.server_conn)
    for _ in range(8):  # HttpClient and server TLS layers wrap the Http1Client / Http2Client
        if parser is None or isinstance(parser, (Http1Client, Http2Client)):
            return parser
        parser = parser.__dict__.get("child_layer")
    return None


# -- the synthetic event ----------------------------------------------------------------------

if not _IMPORT_ERROR:

    class _Wake(commands.Command):
        """A routing key for HttpLayer.command_sources; never yielded."""

    @dataclass(repr=False)
    class _WakeDone(events.CommandCompleted):
        command: _Wake
        reply: None = None

    class _InsideHttpLayer(proxy_layer.Layer):
        """Runs a generator inside HttpLayer, serialized with every real IO event."""

        def __init__(self, context: Any, body: Callable[[], Iterator[Any]]) -> None:
            super().__init__(context)
            self.body = body
            self.ran = False
            self.cancelled = False

        def _handle_event(self, event: events.Event) -> proxy_layer.CommandGenerator[None]:
            if self.cancelled:
                return
            self.ran = True
            yield from self.body()


async def _run_inside(handler: Any, http_layer: Any, body: Callable[[], Iterator[Any]]) -> bool:
    wake = _Wake()
    inside = _InsideHttpLayer(http_layer.context.fork(), body)
    http_layer.command_sources[wake] = inside
    await handler.server_event(_WakeDone(wake))
    if not inside.ran:
        inside.cancelled = True
        http_layer.command_sources.pop(wake, None)
    return inside.ran


class EndKind(Enum):
    ENDED = "ended"  # ended as if the upstream had ended it; detail: the upstream parser
    GONE = "gone"  # the flow finished meanwhile
    CLOSED = "closed"  # the fallback closed the connections; detail: why


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a technique did: its kind (EndKind, SendKind) and a detail."""

    kind: Enum
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.detail}" if self.detail else self.kind.value


EndOutcome = Outcome  # of end_stream: kind is an EndKind


async def end_stream(flow: http.HTTPFlow, before_end: Callable[[], None], attempts: int = 40) -> EndOutcome:
    """End the client's streamed response as if the upstream had ended it; cancel the upstream.

    `before_end` runs just before the end-of-message event (the stream callable learns why it
    is being flushed). When a precondition fails the connections are closed instead (CLOSED).
    """
    if not usable():
        return close_connections(flow, "mitmproxy internals not usable")
    for _ in range(attempts):
        if not flow.live:
            return EndOutcome(EndKind.GONE)
        handler = _handler(flow)
        found = _locate(handler, flow) if handler is not None else None
        if found is None:
            if flow.response is None or flow.error:
                return EndOutcome(EndKind.GONE)
            return close_connections(flow, "flow not found")
        http_layer, stream_id = found
        step: list[EndOutcome | None] = []
        body = _ending_body(flow, http_layer, stream_id, before_end, step)
        ran = await _run_inside(handler, http_layer, body)
        if not ran:
            await asyncio.sleep(0.05)
            continue
        outcome = step[0] if step else EndOutcome(EndKind.CLOSED, "no outcome")
        if outcome is None:  # waiting for a hook: try again shortly
            await asyncio.sleep(0.05)
            continue
        if outcome.kind is EndKind.CLOSED:
            return close_connections(flow, outcome.detail)
        if outcome.kind is EndKind.ENDED and outcome.detail == "Http1Client":
            # A detached HTTP/1 connection is mid-body upstream: it must never be reused.
            _close_if_open(handler, flow.server_conn)
        return outcome
    return close_connections(flow, "the stream stayed paused")


def _ending_body(
    flow: http.HTTPFlow,
    http_layer: Any,
    stream_id: int,
    before_end: Callable[[], None],
    step: list[EndOutcome | None],
) -> Callable[[], Iterator[Any]]:
    """What runs inside the HttpLayer: check, detach the upstream parser, end, cancel upstream.
    It appends one outcome to `step`: None to try again, CLOSED with the reason to close instead."""

    def body() -> Iterator[Any]:
        stream = http_layer.streams.get(stream_id)
        if stream is None or stream.flow is not flow:
            step.append(EndOutcome(EndKind.GONE))
            return
        if stream._paused is not None:  # waiting for a hook
            step.append(None)
            return
        if stream.server_state != stream.state_stream_response_body:
            step.append(EndOutcome(EndKind.CLOSED, f"stream in {getattr(stream.server_state, '__name__', '?')}"))
            return
        parser = _upstream_parser(http_layer, flow)
        if isinstance(parser, Http1Client):
            if parser.stream_id != stream_id or parser.state != parser.read_body:
                step.append(EndOutcome(EndKind.CLOSED, "HTTP/1 upstream is not reading this body"))
                return
            parser.state = parser.done  # late upstream bytes and EOF are ignored from now on
        elif isinstance(parser, Http2Client):
            ours = parser.our_stream_id.get(stream_id)
            if ours is None or parser.streams.get(ours) is not Http2StreamState.HEADERS_RECEIVED:
                step.append(EndOutcome(EndKind.CLOSED, "HTTP/2 upstream stream is not receiving"))
                return
            parser.streams.pop(ours, None)  # Http2Client ignores frames of unknown streams
        else:
            step.append(EndOutcome(EndKind.CLOSED, f"unknown upstream layer {type(parser).__name__}"))
            return
        before_end()
        step.append(EndOutcome(EndKind.ENDED, type(parser).__name__))
        yield ReceiveHttp(ResponseEndOfMessage(stream_id))
        yield SendHttp(RequestProtocolError(stream_id, "ended by kimiwire", ErrorCode.CANCEL), flow.server_conn)

    return body


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
    if not usable():
        return SendOutcome(SendKind.REFUSED, "mitmproxy internals not usable")
    if not flow.client_conn.state & ConnectionState.CAN_WRITE:
        return SendOutcome(SendKind.GONE)
    handler = _handler(flow)
    found = _locate(handler, flow) if handler is not None else None
    if found is None:
        return SendOutcome(SendKind.GONE)
    http_layer, stream_id = found
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

    ran = await _run_inside(handler, http_layer, body)
    if outcome:
        return outcome[0]
    return SendOutcome(SendKind.GONE) if not ran else SendOutcome(SendKind.REFUSED, "no outcome")


async def send_raw_to_client(flow: http.HTTPFlow, data: bytes) -> SendOutcome:
    """Write bytes straight to an HTTP/1 client whose flow waits in its `error` hook and that has
    been sent no response yet (a retry after a failure before response headers, answered as it
    comes: the caller writes the status line and headers, then chunks). The answer registered
    with `raw_sent` then only closes the connection."""
    if not data:
        return SendOutcome(SendKind.NOTHING)
    if not usable() or not flow.request.http_version.startswith("HTTP/1"):
        return SendOutcome(SendKind.REFUSED, "not an HTTP/1 client")
    if not flow.client_conn.state & ConnectionState.CAN_WRITE:
        return SendOutcome(SendKind.GONE)
    handler = _handler(flow)
    found = _locate(handler, flow) if handler is not None else None
    if found is None:
        return SendOutcome(SendKind.GONE)
    http_layer, stream_id = found
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
        if server.response is not None and server.response is not _EARLY_HEADS.get(flow.client_conn.id):
            outcome.append(SendOutcome(SendKind.REFUSED, "a response was sent already"))
            return
        outcome.append(SendOutcome(SendKind.SENT))
        yield commands.SendData(flow.client_conn, data)

    ran = await _run_inside(handler, http_layer, body)
    if outcome:
        return outcome[0]
    return SendOutcome(SendKind.GONE) if not ran else SendOutcome(SendKind.REFUSED, "no outcome")


# -- early heads ---------------------------------------------------------------------------

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


async def send_early_head(flow: http.HTTPFlow) -> SendOutcome:
    """Send an HTTP/1 client whose flow still waits for the upstream's response headers a `200 OK`
    event-stream head now; the upstream's head, when it comes, does not reach the client (the body
    goes on in the chunks begun). Later chunks: `send_raw_to_client` until the upstream's head,
    mitmproxy's own ResponseData after it."""
    if not usable() or not flow.request.http_version.startswith("HTTP/1"):
        return SendOutcome(SendKind.REFUSED, "not an HTTP/1 client")
    if not flow.client_conn.state & ConnectionState.CAN_WRITE:
        return SendOutcome(SendKind.GONE)
    handler = _handler(flow)
    found = _locate(handler, flow) if handler is not None else None
    if found is None:
        return SendOutcome(SendKind.GONE)
    http_layer, stream_id = found
    outcome: list[SendOutcome] = []

    def body() -> Iterator[Any]:
        from mitmproxy.net.http import http1

        stream = http_layer.streams.get(stream_id)
        server = http_layer.connections.get(flow.client_conn)
        if stream is None or stream.flow is not flow or server is None or flow.response is not None:
            outcome.append(SendOutcome(SendKind.GONE))
            return
        early = _EARLY_HEADS.get(flow.client_conn.id)
        if isinstance(server, Http1Server) and early is not None and server.response is early:
            outcome.append(SendOutcome(SendKind.SENT))  # sent already (the early head and a retry met)
            return
        if not isinstance(server, Http1Server) or server.response is not None or server.stream_id != stream_id:
            outcome.append(SendOutcome(SendKind.REFUSED, "a response was sent already"))
            return
        head = early_head()
        server.response = head
        _EARLY_HEADS[flow.client_conn.id] = head
        server.send = MethodType(_answering_send, server)  # type: ignore[method-assign]  # one connection's own send
        outcome.append(SendOutcome(SendKind.SENT))
        yield commands.SendData(flow.client_conn, http1.assemble_response_head(head))

    ran = await _run_inside(handler, http_layer, body)
    if outcome:
        return outcome[0]
    return SendOutcome(SendKind.GONE) if not ran else SendOutcome(SendKind.REFUSED, "no outcome")


def forget_early_head(client_conn_id: Any) -> None:
    _EARLY_HEADS.pop(client_conn_id, None)


def early_heads() -> int:
    return len(_EARLY_HEADS)


def _close_if_open(handler: Any, conn: Any) -> bool:
    if conn.state is ConnectionState.CLOSED or conn not in handler.transports:
        return False
    handler.close_connection(conn)
    return True


def close_upstream(flow: http.HTTPFlow) -> bool:
    """Close the upstream connection of a flow; mitmproxy then runs its error path."""
    handler = _handler(flow)
    return handler is not None and _close_if_open(handler, flow.server_conn)


def close_connections(flow: http.HTTPFlow, why: str) -> EndOutcome:
    """The fallback: close the upstream (or, failing that, the client) now, so nobody waits."""
    logger.warning("kimiwire: closing the connections of %s: %s", url_for_log(flow.request.url), why)
    handler = _handler(flow)
    try:
        if handler is not None and not _close_if_open(handler, flow.server_conn):
            _close_if_open(handler, flow.client_conn)
    except Exception:
        logger.exception("kimiwire: closing the connections failed")
    return EndOutcome(EndKind.CLOSED, why)


# -- request bodies counted as they arrive ---------------------------------------------------


def limit_request_body(flow: http.HTTPFlow, limit: int, answer: ErrorAnswer, refused: Callable[[int], None]) -> bool:
    """From the `requestheaders` hook of an HTTP/1 request: count its body as it arrives and, once
    more than `limit` bytes came (at once for a negative limit), answer it now: the buffered part
    is dropped, `answer` goes to the client (connection: close) and `refused(bytes received)` runs.
    The rest of the body is read and discarded (a client that writes its whole body before reading,
    as most do, then reads the answer instead of blocking on a socket nobody reads) up to `limit`
    more bytes, then the connection is closed. False when the flow's stream cannot be found."""
    if not usable() or not flow.request.http_version.startswith("HTTP/1"):
        return False
    handler = _handler(flow)
    found = _locate(handler, flow) if handler is not None else None
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


# -- error answers on HTTP/1 client connections ----------------------------------------------


@dataclass(slots=True)
class ErrorAnswer:
    status: int
    body: bytes  # a whole JSON error response body, if no response has started
    tail: bytes  # SSE events that close a stream already under way
    content_type: str = "application/json"  # of `body` (a retry's answer may be an event stream)
    raw_sent: bool = False  # the answer went out already (send_raw_to_client): only close the connection


_ANSWERS: dict[Any, ErrorAnswer] = {}
_INSTALLED = False
_CLASS_WRAPPED = False


def set_error_answer(flow: http.HTTPFlow, answer: ErrorAnswer, replace: bool = True) -> None:
    if replace or flow.client_conn.id not in _ANSWERS:
        _ANSWERS[flow.client_conn.id] = answer
    if _INSTALLED:
        _answer_through(flow)


def can_answer(flow: http.HTTPFlow) -> bool:
    """Whether an error answer registered now would reach this flow's client: answers are sent on
    HTTP/1 client connections that can still be written to."""
    conn = flow.client_conn
    return (
        _INSTALLED and flow.request.http_version.startswith("HTTP/1") and bool(conn.state & ConnectionState.CAN_WRITE)
    )


def forget_error_answer(client_conn_id: Any) -> None:
    _ANSWERS.pop(client_conn_id, None)


def pending_error_answers() -> int:
    return len(_ANSWERS)


def install_error_answers() -> bool:
    """True when error answers can be used. Nothing is wrapped yet: a client connection gets the
    answering send when an answer is registered for it (`set_error_answer`), so the events sent to
    every other connection (all of them, most of the time) take mitmproxy's own send, no extra call."""
    global _INSTALLED
    if not _INSTALLED and usable():
        _INSTALLED = True
    return _INSTALLED


def _send_nothing() -> proxy_layer.CommandGenerator[None]:
    """A send that sends nothing (the upstream's head of a stream that had an early head)."""
    yield from ()


def _answering_send(self: Http1Server, event: HttpEvent) -> proxy_layer.CommandGenerator[None]:
    """Http1Server.send for a client connection that may have an answer: a protocol error with a
    registered answer sends that answer; anything else goes to mitmproxy's own send. Not a
    generator itself (the events of a stream pass here). The upstream's head of a stream that had
    an early head is dropped (the head the client has is that Http1Server's `response`)."""
    kind = type(event)
    if kind is ResponseHeaders and self.response is not None and self.response is _EARLY_HEADS.get(self.conn.id):
        return _send_nothing()
    if kind is not ResponseProtocolError:
        return _MITMPROXY_SEND(self, event)
    answer = _ANSWERS.pop(self.conn.id, None)
    if answer is None and self.response is not None and self.response is _EARLY_HEADS.get(self.conn.id):
        # A stream begun by an early head never ends torn: the error event and [DONE] at least.
        answer = ErrorAnswer(502, b"", _EARLY_HEAD_FAILED)
    if answer is None or not (self.conn.state & ConnectionState.CAN_WRITE):
        return _MITMPROXY_SEND(self, event)
    if _client_at_fault(event) and answer.status >= 500:
        return _MITMPROXY_SEND(self, event)
    return _send_answer(self, answer)


def _client_at_fault(event: Any) -> bool:
    """mitmproxy answers a request it refused (malformed, invalid for the mode) with a 4xx: that
    answer stands, never an upstream error in its place."""
    status = event.code.http_status_code()
    return status is not None and 400 <= status < 500


def _send_answer(self: Http1Server, answer: ErrorAnswer) -> proxy_layer.CommandGenerator[None]:
    if answer.raw_sent:
        pass
    elif self.response is None:
        response = http.Response.make(
            answer.status, answer.body, {"content-type": answer.content_type, "connection": "close"}
        )
        from mitmproxy.net.http import http1

        yield commands.SendData(self.conn, http1.assemble_response(response))
    else:
        # The closing events, then a clean end of the body: an empty tail still ends a stream
        # whose [DONE] went out before the upstream tore the connection.
        if "chunked" in self.response.headers.get("transfer-encoding", "").lower():
            data = (b"%x\r\n%s\r\n" % (len(answer.tail), answer.tail) if answer.tail else b"") + b"0\r\n\r\n"
        else:
            data = answer.tail
        if data:
            yield commands.SendData(self.conn, data)
    yield commands.CloseConnection(self.conn)


def _answer_through(flow: http.HTTPFlow) -> None:
    """Give the flow's client connection (its Http1Server) the answering send. When that layer
    cannot be found, every Http1Server gets it (the class's send, wrapped once): an answer is
    never lost, it only costs every other connection a call per event."""
    global _CLASS_WRAPPED
    handler = _handler(flow)
    if handler is not None:
        for current in _layers(handler.layer):
            if isinstance(current, HttpLayer):
                server = current.connections.get(flow.client_conn)
                if isinstance(server, Http1Server):
                    if "send" not in server.__dict__:  # (this instance's send, over the class's method)
                        server.send = MethodType(_answering_send, server)  # type: ignore[method-assign]
                    return
                if server is not None:
                    return  # HTTP/2: no answers there (can_answer says so)
    if not _CLASS_WRAPPED:
        logger.warning("kimiwire: %s; error answers are checked on every HTTP/1 client connection now", FALLBACK)
        Http1Server.send = _answering_send  # type: ignore[method-assign]
        _CLASS_WRAPPED = True


FALLBACK = "a client connection's layer was not found"
_EARLY_HEAD_FAILED = b"".join(
    events_for_error_body(502, error_body("kimiwire: the upstream failed before it answered", "upstream_error", 502))
)
