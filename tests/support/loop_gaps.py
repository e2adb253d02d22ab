"""How long one paced stream's events wait while the proxy deals with another, heavy request.

Every stream the proxy serves runs on its one event loop: a hook or a thread that holds the loop (or
the GIL) holds every stream's events back. `measure_gaps(proxy, load)` reads a paced stream (an
event every `PACE` seconds from the upstream) through the proxy, starts `load()` in a thread once
the stream is under way, and returns the gaps between the events as the client received them.

`responder` is the upstream for it: a request with the `PACED_HEADER` header gets the paced stream,
anything else a small JSON answer, decided without reading the body (a 30 MB body parsed here would
hold this process's GIL, and the paced upstream and the reader live in this process too).
"""

from __future__ import annotations

import gzip
import itertools
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
import orjson

from tests.support.streams import Stream
from tests.support.upstream import TEXT_COMPLETION, RecordedRequest, Reply, json_reply, sse_reply

PACE = 0.010  # seconds between the paced stream's events (a fast model's token rate)
PACED_HEADER = "x-test-paced"
MB = 1 << 20
MOST_SECONDS = 60.0  # the paced stream's length: longer than any load should take


def paced_events(count: int) -> list[bytes]:
    stream = Stream().chunk({"role": "assistant", "content": ""})
    for n in range(count):
        stream.chunk({"content": f"w{n} "})
    return stream.chunk({}, "stop").done().events


def responder(request: RecordedRequest) -> Reply:
    count = request.headers.get(PACED_HEADER)
    if count is not None:
        return sse_reply(paced_events(int(count)), gap=PACE)
    return json_reply(TEXT_COMPLETION)


def tool_call_history(size: int) -> bytes:
    """A chat request of about `size` bytes that is mostly tool-call history: rounds of an assistant
    turn with reasoning and two calls whose ids are OpenClaw's (`functionsread12`, which the request
    repair rewrites) and the two results: about one call per 550 bytes, as long agent sessions are."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "go"}]
    size_so_far, k = 0, 0
    while size_so_far < size:
        calls = []
        for _ in range(2):
            arguments = orjson.dumps({"path": f"/src/module_{k}.py"}).decode()
            function = {"name": "read", "arguments": arguments}
            calls.append({"id": f"functionsread{k}", "type": "function", "function": function})
            k += 1
        turn = {"role": "assistant", "content": None, "reasoning_content": "r" * 120, "tool_calls": calls}
        results = [{"role": "tool", "tool_call_id": c["id"], "content": "c" * 300} for c in calls]
        messages += [turn, *results]
        size_so_far += 1100
    tools = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object", "properties": {}}}}]
    return orjson.dumps({"model": "kimi-k2-thinking", "stream": False, "messages": messages, "tools": tools})


def gzip_bomb(inflated: int) -> bytes:
    """A few hundred KB of gzip that inflates to `inflated` bytes of one JSON document."""
    return gzip.compress(b'{"model": "kimi", "pad": "' + b" " * inflated + b'"}', 9)


@dataclass(frozen=True)
class Gaps:
    values: list[float]
    load_seconds: float  # how long the load took, from its start to its answer
    load_status: int | None

    def quantile(self, q: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    def __str__(self) -> str:
        return (
            f"p50 {self.p50 * 1e3:.1f} ms, p99 {self.p99 * 1e3:.1f} ms, max {max(self.values) * 1e3:.1f} ms "
            f"({len(self.values)} gaps; load {self.load_seconds:.2f} s, status {self.load_status})"
        )


def post(url: str, content: bytes | Callable[[], Iterable[bytes]], **headers: str) -> Callable[[], int]:
    """The load: one POST of `content` (bytes with a Content-Length, or pieces sent chunked), written
    straight to a socket, which lets the GIL go and copies nothing (an HTTP client joins the pieces of a
    large body first: a copy that would hold this process's GIL, and with it the paced stream's reader).
    Its answer's status, -1 when the connection broke first."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None and parsed.port is not None
    address = (parsed.hostname, parsed.port)
    fields = {"host": parsed.netloc, "content-type": "application/json", "connection": "close", **headers}

    def send() -> int:
        framing = (
            {"content-length": str(len(content))} if isinstance(content, bytes) else {"transfer-encoding": "chunked"}
        )
        head = "".join(f"{name}: {value}\r\n" for name, value in {**fields, **framing}.items())
        with socket.create_connection(address, timeout=MOST_SECONDS) as sock:
            try:
                sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode())
                if isinstance(content, bytes):
                    sock.sendall(content)
                else:
                    for piece in content():
                        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the proxy answered and closed before all was sent: its answer is read below
            answer = b""
            try:
                while piece := sock.recv(65536):
                    answer += piece
            except OSError:
                pass
        status = answer.split(b"\r\n", 1)[0].split(b" ")
        return int(status[1]) if len(status) > 1 and status[1].isdigit() else -1

    return send


def measure_gaps(proxy_url: str, load: Callable[[], int], lead: float = 0.3, after: float = 0.5) -> Gaps:
    """The paced stream's gaps (seconds) from `lead` seconds before `load` starts to `after` seconds
    after it is answered (the stream is long enough to outlast any load, and left once it is over)."""
    arrivals: list[float] = []
    result: dict[str, float | int] = {}

    def run_load() -> None:
        time.sleep(lead)
        start = time.monotonic()
        result["start"] = start
        result["status"] = load()
        result["end"] = time.monotonic()

    loader = threading.Thread(target=run_load, name="load", daemon=True)
    body = orjson.dumps({"model": "kimi", "stream": True, "messages": [{"role": "user", "content": "count"}]})
    headers = {"content-type": "application/json", PACED_HEADER: str(int(MOST_SECONDS / PACE))}
    url = f"{proxy_url}/v1/chat/completions"
    with httpx.stream("POST", url, content=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()[:300]
        pending = b""
        for piece in response.iter_raw():
            now = time.monotonic()
            pending += piece
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                if event.startswith(b"data: "):
                    arrivals.append(now)
                    if len(arrivals) == 1:
                        loader.start()
            if "end" in result and now > result["end"] + after:
                break
    loader.join(MOST_SECONDS)
    assert "end" in result, f"the load did not end while the stream lasted ({len(arrivals)} events)"
    window = [at for at in arrivals if result["start"] - lead <= at <= result["end"] + after]
    gaps = [later - earlier for earlier, later in itertools.pairwise(window)]
    return Gaps(gaps, result["end"] - result["start"], int(result["status"]))
