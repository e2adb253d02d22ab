"""A scripted fake upstream on the simulator's server: it records every request and answers each
with `responder(request) -> Reply`, except kimiwire's background `GET …/models` probe
(mitm/upstream_probe.py), which is answered 404 and kept apart in `probes`, so the scripts and the
requests they record are only the clients' own. A Reply says the status, headers, body pieces, their pacing
and framing (chunked, content-length or close-delimited) and the fault to play, so tests can
script every stream shape, raw bytes included."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .server import HttpServer, ServerThread, _headers, _reset, _status_line


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


# How a reply's body is delimited: chunked, a Content-Length, or the connection closing.
Framing = Literal["chunked", "length", "close"]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    pieces: list[bytes] = field(default_factory=list)
    gap: float = 0.0  # seconds between pieces
    framing: Framing = "chunked"
    hold_open: float = 0.0  # after the last piece, keep the body open this long (then end it, or reset)
    reset_after: int | None = None  # send this many pieces, then reset the connection
    header_delay: float = 0.0  # wait this long before sending the status line
    content_length: int | None = None  # declare this length (framing "length") whatever is sent
    first_gap: float = 0.0  # wait this long after the headers before the first piece
    reset_before_headers: bool = False  # reset the connection instead of answering (after header_delay)


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status=status, pieces=[orjson.dumps(obj)], framing="length")


def sse_reply(events: list[bytes], **kwargs: Any) -> Reply:
    return Reply(headers={"content-type": "text/event-stream", "cache-control": "no-cache"}, pieces=events, **kwargs)


class ScriptedServer(HttpServer):
    def __init__(self, responder: Callable[[RecordedRequest], Reply], host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        self.probes: list[RecordedRequest] = []

    async def _respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        request = RecordedRequest(method, path, headers, body)
        if method == "GET" and path.split("?", 1)[0].rstrip("/").endswith("/models"):
            self.probes.append(request)
            return await send_reply(writer, json_reply({"error": {"message": "no model list here"}}, 404))
        self.requests.append(request)
        return await send_reply(writer, self.responder(request))


async def send_reply(writer: asyncio.StreamWriter, reply: Reply) -> bool:
    """Write one scripted reply; True when the connection may serve another request."""
    if reply.header_delay:
        await asyncio.sleep(reply.header_delay)
    if reply.reset_before_headers:
        _reset(writer)
        return False
    pairs = list(reply.headers.items())
    if reply.framing == "chunked":
        pairs.append(("transfer-encoding", "chunked"))
    elif reply.framing == "length":
        declared = reply.content_length
        pairs.append(("content-length", str(declared or sum(len(p) for p in reply.pieces))))
    else:
        pairs.append(("connection", "close"))
    writer.write(_status_line(reply.status) + _headers(pairs))
    await writer.drain()
    if reply.first_gap:
        await asyncio.sleep(reply.first_gap)
    for n, piece in enumerate(reply.pieces):
        if reply.reset_after is not None and n >= reply.reset_after:
            await _sent(writer)
            _reset(writer)
            return False
        if n and reply.gap:
            await asyncio.sleep(reply.gap)
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.framing == "chunked" else piece)
        await writer.drain()
    if reply.hold_open:
        await asyncio.sleep(reply.hold_open)
    if reply.reset_after is not None:  # after every piece: reset once the hold is over
        await _sent(writer)
        _reset(writer)
        return False
    if reply.framing == "chunked":
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return reply.framing != "close" and reply.content_length is None


class ScriptedUpstream(ServerThread):
    """A ScriptedServer in a background thread: `requests`, `url`, `port`; a context manager."""

    def __init__(self, responder: Callable[[RecordedRequest], Reply]) -> None:
        self.scripted = ScriptedServer(responder)
        super().__init__(self.scripted)

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.scripted.requests

    def __enter__(self) -> ScriptedUpstream:
        super().__enter__()
        return self


async def _sent(writer: asyncio.StreamWriter) -> None:
    """Wait until every piece written has left for the kernel: `drain` returns below the transport's
    high-water mark, and a reset (an abort) throws away what is still buffered, so "n pieces, then a
    reset" would otherwise sometimes send fewer under load."""
    writer.transport.set_write_buffer_limits(high=0)
    await writer.drain()
