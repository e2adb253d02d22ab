"""A scripted upstream on 127.0.0.1 that records what it receives (stdlib only, threaded).

Each request is answered by `responder(request) -> Reply`; a Reply says the status, headers,
body pieces, their pacing and framing (chunked, content-length or close-delimited), so tests
can script every stream shape and fault.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    pieces: list[bytes] = field(default_factory=list)
    gap: float = 0.0  # seconds between pieces
    framing: str = "chunked"  # chunked | length | close
    hold_open: float = 0.0  # after the last piece, keep the body open this long (chunked: no terminator)
    reset_after: int | None = None  # send this many pieces, then reset the connection
    header_delay: float = 0.0  # wait this long before sending the status line
    content_length: int | None = None  # declare this length (framing "length") whatever is sent
    first_gap: float = 0.0  # wait this long after the headers before the first piece


def json_reply(obj, status: int = 200) -> Reply:
    return Reply(status=status, pieces=[orjson.dumps(obj)], framing="length")


def sse_reply(events: list[bytes], **kwargs) -> Reply:
    return Reply(headers={"content-type": "text/event-stream", "cache-control": "no-cache"}, pieces=events, **kwargs)


class RecordingUpstream:
    def __init__(self, responder: Callable[[RecordedRequest], Reply]) -> None:
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self._handle()

            def do_GET(self) -> None:
                self._handle()

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                upstream.requests.append(request)
                reply = upstream.responder(request)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if reply.header_delay:
                    time.sleep(reply.header_delay)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.framing == "chunked":
                    self.send_header("transfer-encoding", "chunked")
                elif reply.framing == "length":
                    declared = reply.content_length
                    self.send_header("content-length", str(declared or sum(len(p) for p in reply.pieces)))
                else:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.flush()
                if reply.first_gap:
                    time.sleep(reply.first_gap)
                try:
                    for n, piece in enumerate(reply.pieces):
                        if reply.reset_after is not None and n >= reply.reset_after:
                            self._reset()
                            return
                        if n and reply.gap:
                            time.sleep(reply.gap)
                        if reply.framing == "chunked":
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        else:
                            self.wfile.write(piece)
                        self.wfile.flush()
                    if reply.reset_after is not None:
                        self._reset()
                        return
                    if reply.hold_open:
                        time.sleep(reply.hold_open)
                    if reply.framing == "chunked":
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="upstream", daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
