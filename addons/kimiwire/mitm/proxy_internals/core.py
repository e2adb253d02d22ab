"""What every technique of the package shares: the private imports, the check that they fit this
mitmproxy, finding a flow's place in the layer tree, and the synthetic event that runs a step
inside a flow's HttpLayer, serialized with every real IO event."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mitmproxy import ctx, http, version
from mitmproxy.connection import ConnectionState

logger = logging.getLogger("kimiwire")

VERIFIED_VERSIONS = ("12.2.",)

try:
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy import layer as proxy_layer
    from mitmproxy.proxy.layers.http import HttpLayer
    from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Connection, Http1Server
    from mitmproxy.proxy.layers.http._http2 import Http2Client

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
        (Http1Connection, "mark_done"),
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
    if not {"request", "response", "request_done", "response_done", "stream_id"} <= set(
        Http1Connection.__annotations__
    ) | set(Http1Server.__annotations__):
        found.append("Http1Server no longer keeps .request, .response, .request_done, .response_done and .stream_id")
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


def handler_of(flow: http.HTTPFlow) -> Any:
    server = ctx.master.addons.get("proxyserver")
    connections = getattr(server, "connections", None) if server is not None else None
    return connections.get(flow.client_conn.id) if isinstance(connections, dict) else None


def layers(root: Any) -> Iterator[Any]:
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


def locate(handler: Any, flow: http.HTTPFlow) -> tuple[Any, int] | None:
    for current in layers(handler.layer):
        if isinstance(current, HttpLayer):
            for stream_id, stream in current.streams.items():
                if getattr(stream, "flow", None) is flow:
                    return current, stream_id
    return None


def upstream_parser(http_layer: Any, flow: http.HTTPFlow) -> Any:
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


async def run_inside(handler: Any, http_layer: Any, body: Callable[[], Iterator[Any]]) -> bool:
    wake = _Wake()
    inside = _InsideHttpLayer(http_layer.context.fork(), body)
    http_layer.command_sources[wake] = inside
    await handler.server_event(_WakeDone(wake))
    if not inside.ran:
        inside.cancelled = True
        http_layer.command_sources.pop(wake, None)
    return inside.ran


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a technique did: its kind (EndKind, SendKind) and a detail."""

    kind: Enum
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.detail}" if self.detail else self.kind.value


def find(flow: http.HTTPFlow) -> tuple[Any, Any, int] | None:
    """The flow's connection handler, its HttpLayer and its stream id, or None when gone."""
    handler = handler_of(flow)
    found = locate(handler, flow) if handler is not None else None
    return None if found is None else (handler, *found)


def close_if_open(handler: Any, conn: Any) -> bool:
    if conn.state is ConnectionState.CLOSED or conn not in handler.transports:
        return False
    handler.close_connection(conn)
    return True
