"""Ending a client's stream as if the upstream had ended it (technique 1 of the package), and the
fallback that closes the connections when that cannot be done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from mitmproxy import http

from kimiwire.mitm.proxy_internals.core import (
    Outcome,
    close_if_open,
    handler_of,
    locate,
    logger,
    run_inside,
    upstream_parser,
    usable,
)
from kimiwire.wire.capture.redaction import url_for_log

try:
    from mitmproxy.proxy.layers.http import SendHttp
    from mitmproxy.proxy.layers.http._base import ReceiveHttp
    from mitmproxy.proxy.layers.http._events import ErrorCode, RequestProtocolError, ResponseEndOfMessage
    from mitmproxy.proxy.layers.http._http1 import Http1Client
    from mitmproxy.proxy.layers.http._http2 import Http2Client
    from mitmproxy.proxy.layers.http._http2 import StreamState as Http2StreamState
except ImportError:  # pragma: no cover - only on an unverified mitmproxy (core.problems says so)
    pass


class EndKind(Enum):
    ENDED = "ended"  # ended as if the upstream had ended it; detail: the upstream parser
    GONE = "gone"  # the flow finished meanwhile
    CLOSED = "closed"  # the fallback closed the connections; detail: why


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
        handler = handler_of(flow)
        found = locate(handler, flow) if handler is not None else None
        if found is None:
            if flow.response is None or flow.error:
                return EndOutcome(EndKind.GONE)
            return close_connections(flow, "flow not found")
        http_layer, stream_id = found
        step: list[EndOutcome | None] = []
        body = _ending_body(flow, http_layer, stream_id, before_end, step)
        ran = await run_inside(handler, http_layer, body)
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
            close_if_open(handler, flow.server_conn)
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
        parser = upstream_parser(http_layer, flow)
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


def close_upstream(flow: http.HTTPFlow) -> bool:
    """Close the upstream connection of a flow; mitmproxy then runs its error path."""
    handler = handler_of(flow)
    return handler is not None and close_if_open(handler, flow.server_conn)


def close_connections(flow: http.HTTPFlow, why: str) -> EndOutcome:
    """The fallback: close the upstream (or, failing that, the client) now, so nobody waits."""
    logger.warning("kimiwire: closing the connections of %s: %s", url_for_log(flow.request.url), why)
    handler = handler_of(flow)
    try:
        if handler is not None and not close_if_open(handler, flow.server_conn):
            close_if_open(handler, flow.client_conn)
    except Exception:
        logger.exception("kimiwire: closing the connections failed")
    return EndOutcome(EndKind.CLOSED, why)
