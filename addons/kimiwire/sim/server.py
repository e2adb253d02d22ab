"""The simulator's HTTP/1.1 server (asyncio, 127.0.0.1): chunked SSE as uvicorn-based SGLang and
vLLM servers send it, keep-alive, and the transport faults (stall, [DONE] with the body left open,
reset, error status, slow first byte).

`HttpServer` is the part every fake upstream shares (request parsing, keep-alive, JSON answers,
resets, stopping with connections still open); `Simulator` answers like a Kimi server,
`sim/scripted.py` answers with scripted replies (the tests' recording upstream). `ServerThread`
runs either on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import pathlib
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from kimiwire.wire.openai_errors import error_object
from kimiwire.wire.response.reasoning_field import TEXT_KEYS

from .model import plan_turn
from .moonshot_validator import moonshot_refusal
from .replay import STAMP_MARK, ReplayFiles
from .settings import SimSettings, settings_for_request, turn_fault
from .shapes import DONE, completion_body, faulty_plan, model_list, poisoned_plan, stream_chunks

SETTINGS_HEADER = "x-kimi-sim"


@dataclass
class SimRequest:
    """What the simulator received, for tests and the demo (GET /_sim/requests)."""

    at: float
    path: str
    body: Any
    settings: str
    tool_call_ids: list[Any] = field(default_factory=list)  # as sent: a missing id is None
    poisoned_by: str | None = None
    attempt: int = 1  # how many identical requests (this one included) the simulator has seen
    raw: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "attempt": self.attempt,
            "sha256": hashlib.sha256(self.raw).hexdigest(),
            "path": self.path,
            "settings": self.settings,
            "tool_call_ids": self.tool_call_ids,
            "poisoned_by": self.poisoned_by,
            "body": self.body,
        }


def _status_line(code: int) -> bytes:
    reasons = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    return f"HTTP/1.1 {code} {reasons.get(code, 'Error')}\r\n".encode()


def _headers(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs) + b"\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


MAX_REQUEST_BODY = 64 * 1024 * 1024


async def _chunked_body(reader: asyncio.StreamReader) -> bytes:
    """A request body sent with `Transfer-Encoding: chunked` (trailers read and dropped)."""
    parts: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > MAX_REQUEST_BODY:
            raise ValueError("request body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class HttpServer:
    """A minimal HTTP/1.1 server on 127.0.0.1; subclasses answer in `_respond` (True: keep-alive)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):  # held-open streams end now, not at their timers
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = await _chunked_body(reader)  # Bun's fetch (opencode) sends bodies chunked
                else:
                    length = int(headers.get("content-length") or 0)
                    body = await reader.readexactly(length) if length else b""
                keep_alive = await self._respond(method, path, headers, body, writer)
                if not keep_alive or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._connections.discard(task)

    async def _respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        raise NotImplementedError

    async def _json(
        self, writer: asyncio.StreamWriter, status: int, payload: Any, extra: list[tuple[str, str]] | None = None
    ) -> bool:
        data = orjson.dumps(payload)
        writer.write(
            _status_line(status)
            + _headers([("content-type", "application/json"), ("content-length", str(len(data))), *(extra or [])])
            + data
        )
        await writer.drain()
        return True


class Simulator(HttpServer):
    def __init__(
        self,
        defaults: SimSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        replay_dir: pathlib.Path | None = None,
    ) -> None:
        super().__init__(host, port)
        self.replays = ReplayFiles(replay_dir)
        self.defaults = defaults or SimSettings()
        self.defaults.validate()
        self.requests: deque[SimRequest] = deque(maxlen=2000)
        self._counter = 0
        self._attempts: OrderedDict[bytes, int] = OrderedDict()  # per identical request: turn faults

    def _attempt(self, header: str | None, body: bytes) -> int:
        key = hashlib.sha256((header or "").encode() + b"\0" + body).digest()
        count = self._attempts.pop(key, 0) + 1
        self._attempts[key] = count
        if len(self._attempts) > 10_000:
            self._attempts.popitem(last=False)
        return count

    async def _respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        route = path.split("?", 1)[0].rstrip("/")
        if route == "/_sim/requests":
            if method == "DELETE":
                self.requests.clear()
            return await self._json(writer, 200, [r.as_dict() for r in self.requests])
        if route.endswith("/models") and method == "GET":
            settings = settings_for_request(self.defaults, headers.get(SETTINGS_HEADER), None)
            return await self._json(writer, 200, model_list(settings.shape, settings.served))
        if route in ("/health", "/_sim/health"):
            return await self._json(writer, 200, {"ok": True})
        if method != "POST" or not route.endswith("/chat/completions"):
            return await self._json(writer, 404, error_object("not found", "invalid_request_error", 404))
        try:
            request = orjson.loads(body)
            assert isinstance(request, dict)
            settings = settings_for_request(self.defaults, headers.get(SETTINGS_HEADER), request.get("model"))
        except (orjson.JSONDecodeError, AssertionError):
            return await self._json(
                writer, 400, error_object("body must be a JSON object", "invalid_request_error", 400)
            )
        except ValueError as exc:
            return await self._json(writer, 400, error_object(str(exc), "invalid_request_error", 400))
        if settings.replay and request.get("stream") is True:
            try:
                events = self.replays.events(settings.replay)
            except ValueError as exc:
                return await self._json(writer, 400, error_object(str(exc), "invalid_request_error", 400))
            return await self._replay(writer, events, settings)
        refusal = moonshot_refusal(request) if settings.contract == "moonshot" else None
        if refusal is not None:
            self.requests.append(
                SimRequest(time.time(), path, request, headers.get(SETTINGS_HEADER, ""), [], None, 0, body)
            )
            return await self._json(writer, 400, error_object(refusal, "invalid_request_error", None))
        plan = plan_turn(request, history_tools=settings.leak == "untooled")
        ids = [
            c.get("id")
            for m in request.get("messages") or []
            if isinstance(m, dict)
            for c in (m.get("tool_calls") or [])
            if isinstance(c, dict)
        ]
        _, leaked = poisoned_plan(plan, settings)
        attempt = self._attempt(headers.get(SETTINGS_HEADER), body)
        self.requests.append(
            SimRequest(
                time.time(),
                path,
                request,
                headers.get(SETTINGS_HEADER, ""),
                ids,
                plan.poisoned_by if leaked is not None else None,
                attempt,
                body,
            )
        )
        self._counter += 1
        request_id = f"chatcmpl-sim{self._counter:06d}"
        kind, failing, code = turn_fault(settings.fault)
        if kind != "none":
            if attempt > failing:
                settings = settings.with_overrides("fault=none")
            else:
                return await self._turn_fault(writer, request, plan, settings, kind, code, request_id)
        fault, _, argument = settings.fault.partition(":")
        if fault == "slow-first-byte":
            await asyncio.sleep(float(argument))
        if fault == "reset" and int(argument) == 0:
            _reset(writer)
            return False
        if fault == "status":
            code = int(argument)
            return await self._json(writer, code, error_object(f"simulated HTTP {code}", "simulated_error", code))
        model = str(request.get("model") or "kimi-k2-thinking")
        if request.get("stream") is not True:
            return await self._json(writer, 200, completion_body(plan, settings, model, request_id))
        stream_options = request.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        chunks = stream_chunks(plan, settings, model, include_usage, request_id)
        return await self._stream(writer, chunks, settings, fault, argument)

    async def _turn_fault(
        self,
        writer: asyncio.StreamWriter,
        request: dict[str, Any],
        plan: Any,
        settings: SimSettings,
        kind: str,
        code: int,
        request_id: str,
    ) -> bool:
        """A failing attempt of a turn fault (see settings.TURN_FAULTS)."""
        if kind == "refuse":
            _reset(writer)
            return False
        if kind == "status":
            extra = [("retry-after", "0")] if code == 429 else []
            return await self._json(
                writer, code, error_object(f"simulated HTTP {code}", "simulated_error", code), extra
            )
        streamed = request.get("stream") is True
        model = str(request.get("model") or "kimi-k2-thinking")
        clean = settings.with_overrides("fault=none")
        if kind == "silent" or (kind in ("headers-stall", "reasoning-stall") and not streamed):
            await asyncio.sleep(settings.hold)
            return False
        if kind in ("headers-stall", "reasoning-stall"):
            chunks = stream_chunks(plan, clean, model, False, request_id)
            return await self._stream(writer, chunks, clean, "stall", "0" if kind == "headers-stall" else "3")
        if kind == "stall-first":
            if not streamed:
                await asyncio.sleep(settings.hold)
                return False
            chunks = stream_chunks(plan, clean, model, False, request_id)
            return await self._stream(writer, chunks, clean, "stall", "1")
        if kind == "empty-tool-arrays" and not streamed:  # vllm#54701: non-streamed is correct
            return await self._json(writer, 200, completion_body(plan, clean, model, request_id))
        broken = faulty_plan(plan, kind)
        if not streamed:
            return await self._json(writer, 200, completion_body(broken, clean, model, request_id))
        stream_options = request.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        return await self._stream(writer, stream_chunks(broken, clean, model, include_usage, request_id), clean, "", "")

    async def _stream(
        self, writer: asyncio.StreamWriter, chunks: list[Any], settings: SimSettings, fault: str, argument: str
    ) -> bool:
        writer.write(
            _status_line(200)
            + _headers(
                [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
            )
        )
        await writer.drain()
        limit = int(argument) if fault in ("stall", "reset") else None
        held = settings.held_call  # the server holds the first call until it is complete
        for n, item in enumerate(chunks):
            if limit is not None and n >= limit:
                if fault == "reset":
                    _reset(writer)
                    return False
                await asyncio.sleep(settings.hold)  # stall: nothing more, body left open
                return False
            if n and settings.delay:
                await asyncio.sleep(settings.delay)
            if held and item != DONE and any("tool_calls" in c.get("delta", {}) for c in item.get("choices", [])):
                await asyncio.sleep(held)
                held = 0.0
            if item == DONE:
                data = b"data: [DONE]\n\n"
            else:
                if settings.stamp:
                    _stamp(item)
                data = b"data: " + orjson.dumps(item) + b"\n\n"
            writer.write(_chunk(data))
            await writer.drain()
        if fault == "done-open":
            await asyncio.sleep(settings.hold)
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _replay(self, writer: asyncio.StreamWriter, events: list[bytes], settings: SimSettings) -> bool:
        """A replay's events as they are, one chunk each (`stamp`: with their send times)."""
        writer.write(
            _status_line(200)
            + _headers(
                [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
            )
        )
        for n, event in enumerate(events):
            if n and settings.delay:
                await asyncio.sleep(settings.delay)
            if settings.stamp and STAMP_MARK in event:
                event = event.replace(STAMP_MARK, STAMP_FORMAT.format(time.monotonic_ns()).encode())
            writer.write(_chunk(event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


STAMP_FORMAT = "[sent_at={}]"  # what `stamp` appends to an event's text (scripts/bench.py reads it)


def _stamp(chunk: dict[str, Any]) -> None:
    """The send time (monotonic ns) at the end of the chunk's text, where a real stream varies from
    one event to the next: a field of its own would give every event a shape no Kimi server sends."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        for key in TEXT_KEYS:
            if isinstance(delta.get(key), str):
                delta[key] += STAMP_FORMAT.format(time.monotonic_ns())
                return


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ServerThread:
    """A server on its own event loop in a background thread (tests, demo, benchmarks)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kimiwire-fake-upstream", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class SimulatorThread(ServerThread):
    """The Kimi simulator in a background thread."""

    def __init__(
        self, defaults: SimSettings | None = None, port: int = 0, replay_dir: pathlib.Path | None = None
    ) -> None:
        self.simulator = Simulator(defaults, port=port, replay_dir=replay_dir)
        super().__init__(self.simulator)
