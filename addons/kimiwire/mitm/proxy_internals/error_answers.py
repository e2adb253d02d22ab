"""Error answers on HTTP/1 client connections (technique 3 of the package): a client connection for
which kimiwire registers an answer gets its own `send`, so that a protocol error there sends that
answer instead of mitmproxy's HTML error page, and the connection then serves the client's next
request as after any response; other connections keep mitmproxy's send untouched."""

from __future__ import annotations

from dataclasses import dataclass
from types import MethodType
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from kimiwire.mitm.proxy_internals.core import handler_of, layers, logger, usable
from kimiwire.mitm.proxy_internals.early_heads import is_early_head
from kimiwire.wire.openai_errors import error_body
from kimiwire.wire.retry.early_answer import events_for_error_body

try:
    from mitmproxy.proxy import commands
    from mitmproxy.proxy import layer as proxy_layer
    from mitmproxy.proxy.layers.http import HttpLayer
    from mitmproxy.proxy.layers.http._base import HttpEvent
    from mitmproxy.proxy.layers.http._events import ResponseEndOfMessage, ResponseHeaders, ResponseProtocolError
    from mitmproxy.proxy.layers.http._http1 import Http1Server

    _MITMPROXY_SEND = Http1Server.send
except ImportError:  # pragma: no cover - only on an unverified mitmproxy (core.problems says so)
    pass


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


def answering_send(self: Http1Server, event: HttpEvent) -> proxy_layer.CommandGenerator[None]:
    """Http1Server.send for a client connection that may have an answer: a protocol error with a
    registered answer sends that answer; anything else goes to mitmproxy's own send. Not a
    generator itself (the events of a stream pass here). The upstream's head of a stream that had
    an early head is dropped (the head the client has is that Http1Server's `response`)."""
    kind = type(event)
    if kind is ResponseHeaders and is_early_head(self.conn.id, self.response):
        return _send_nothing()
    if kind is ResponseEndOfMessage:
        # The response ended whole: an answer registered for it is stale, never for the next request.
        _ANSWERS.pop(self.conn.id, None)
        return _MITMPROXY_SEND(self, event)
    if kind is not ResponseProtocolError:
        return _MITMPROXY_SEND(self, event)
    answer = _ANSWERS.pop(self.conn.id, None)
    if answer is None and is_early_head(self.conn.id, self.response):
        # A stream begun by an early head never ends torn: the error event and [DONE] at least.
        answer = ErrorAnswer(502, b"", _EARLY_HEAD_FAILED)
    if answer is None or not (self.conn.state & ConnectionState.CAN_WRITE):
        return _MITMPROXY_SEND(self, event)
    if _client_at_fault(event) and answer.status >= 500:
        return _MITMPROXY_SEND(self, event)
    return _send_answer(self, answer, event.stream_id)


def _client_at_fault(event: Any) -> bool:
    """mitmproxy answers a request it refused (malformed, invalid for the mode) with a 4xx: that
    answer stands, never an upstream error in its place."""
    status = event.code.http_status_code()
    return status is not None and 400 <= status < 500


def _send_answer(self: Http1Server, answer: ErrorAnswer, stream_id: int) -> proxy_layer.CommandGenerator[None]:
    """The answer, then the end of the response: a whole response (the JSON error) or a chunked body
    ended with its terminator leaves the connection as mitmproxy leaves it after any response, open
    for the client's next request (a pooled client sends it there at once: closing it now would
    reset that request). Otherwise the connection is closed, the head saying so when it is ours."""
    reusable = _reusable(self, stream_id)
    if answer.raw_sent:
        reusable = False  # (under the early head, which says connection: close)
    elif self.response is None:
        headers = {"content-type": answer.content_type}
        if not reusable:
            headers["connection"] = "close"
        response = http.Response.make(answer.status, answer.body, headers)
        from mitmproxy.net.http import http1

        yield commands.SendData(self.conn, http1.assemble_response(response))
        if reusable:
            self.response = response
    else:
        # The closing events, then a clean end of the body: an empty tail still ends a stream
        # whose [DONE] went out before the upstream tore the connection.
        if "chunked" in self.response.headers.get("transfer-encoding", "").lower():
            data = (b"%x\r\n%s\r\n" % (len(answer.tail), answer.tail) if answer.tail else b"") + b"0\r\n\r\n"
        else:
            data = answer.tail
            reusable = False  # a body that ends when the connection does
        if data:
            yield commands.SendData(self.conn, data)
    if reusable:
        yield from self.mark_done(response=True)  # mitmproxy's own end of a response (closes when a head says so)
    else:
        yield commands.CloseConnection(self.conn)


def _reusable(self: Http1Server, stream_id: int) -> bool:
    """Whether the client's connection can serve its next request once this answer ends: the
    client's request was read whole, and it is the one this connection is answering."""
    request = self.request
    return (
        self.request_done
        and not self.response_done
        and self.stream_id == stream_id
        and request is not None
        and request.method.upper() != "CONNECT"
    )


def _answer_through(flow: http.HTTPFlow) -> None:
    """Give the flow's client connection (its Http1Server) the answering send. When that layer
    cannot be found, every Http1Server gets it (the class's send, wrapped once): an answer is
    never lost, it only costs every other connection a call per event."""
    global _CLASS_WRAPPED
    handler = handler_of(flow)
    if handler is not None:
        for current in layers(handler.layer):
            if isinstance(current, HttpLayer):
                server = current.connections.get(flow.client_conn)
                if isinstance(server, Http1Server):
                    if "send" not in server.__dict__:  # (this instance's send, over the class's method)
                        server.send = MethodType(answering_send, server)  # type: ignore[method-assign]
                    return
                if server is not None:
                    return  # HTTP/2: no answers there (can_answer says so)
    if not _CLASS_WRAPPED:
        logger.warning("kimiwire: %s; error answers are checked on every HTTP/1 client connection now", FALLBACK)
        Http1Server.send = answering_send  # type: ignore[method-assign]
        _CLASS_WRAPPED = True


FALLBACK = "a client connection's layer was not found"
_EARLY_HEAD_FAILED = b"".join(
    events_for_error_body(502, error_body("kimiwire: the upstream failed before it answered", "upstream_error", 502))
)
