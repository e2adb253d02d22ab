"""What one retry attempt is made of (the attempt loop itself: mitm/retry.py).

- `Attempt`: one extra attempt's record (why, delay, timing, status, outcome, raw body, repairs),
  written into the flow record's `attempts` as `as_dict()`;
- `Success`: the answering attempt's status, headers and raw body;
- `Sink`: where an attempt's repaired events go, live into the client's open body or collected;
- `UpstreamClient`: the pooled httpx client the attempts are sent with, configured from
  mitmproxy's upstream TLS options and never from proxy environment variables;
- `retry_body`, `retry_error_message`, `client_gone`: what an attempt sends, how an error status
  is named, whether the client left.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

import certifi
import httpx
import orjson
from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState

from kimiwire.mitm import proxy_internals
from kimiwire.mitm.fallback import Target
from kimiwire.wire.retry.failure_kinds import FailureKind
from kimiwire.wire.retry.policy import UpstreamError
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT


class ClientGone(Exception):
    """The client left while a retry was under way."""


@dataclass
class Success:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # the upstream's raw body
    broken: str = ""  # the attempt answered, then its stream broke (a reset or a stall): why


# Why an attempt was made: the first one, a hedge sent beside it, or the failure retried.
AttemptWhy = FailureKind | Literal["first", "hedge"]
# How it went: under way (""), answered, cancelled (a hedge or attempt another one beat), or why it failed.
AttemptOutcome = FailureKind | Literal["", "answered", "cancelled"]


@dataclass
class Attempt:
    number: int
    why: AttemptWhy
    delay: float = 0.0
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    status: int | None = None
    outcome: AttemptOutcome = ""
    detail: str = ""
    body: bytes = b""
    repairs: list[dict[str, Any]] = field(default_factory=list)  # what the attempt's repairer did
    target: Target | None = None  # not the flow's upstream: the fallback

    def as_dict(self) -> dict[str, Any]:
        where = {"upstream": self.target.name} if self.target is not None else {}
        return where | {
            "attempt": self.number,
            "why": self.why,
            "delay": round(self.delay, 3),
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "outcome": self.outcome,
            "detail": self.detail,
            "bytes": len(self.body),
            "body": self.body,
            "repairs": self.repairs,
        }


class UpstreamClient:
    """One pooled httpx client, rebuilt when mitmproxy's upstream TLS options change."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._settings: tuple[Any, ...] | None = None

    def get(self) -> httpx.AsyncClient:
        opts = ctx.options
        settings = (
            bool(opts.ssl_insecure),
            opts.ssl_verify_upstream_trusted_ca,
            opts.ssl_verify_upstream_trusted_confdir,
        )
        if self._client is None or settings != self._settings:
            if self._client is not None:
                asyncio.get_running_loop().create_task(self._client.aclose())
            self._client = httpx.AsyncClient(
                verify=_verification(*settings), trust_env=False, timeout=None, follow_redirects=False
            )
            self._settings = settings
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _verification(insecure: bool, ca_file: str | None, ca_dir: str | None) -> ssl.SSLContext | bool:
    if insecure:
        return False
    return ssl.create_default_context(cafile=ca_file or certifi.where(), capath=ca_dir or None)


def client_gone(flow: http.HTTPFlow) -> bool:
    return not (flow.client_conn.state & ConnectionState.CAN_READ)


def retry_body(body: bytes, stream: bool) -> bytes:
    """The body as the proxy sent it the first time, or (kimi_retry_stream=false) non-streamed."""
    if stream:
        return body
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(request, dict):
        return body
    request["stream"] = False
    request.pop("stream_options", None)
    return orjson.dumps(request)


def retry_error_message(body: bytes, status: int) -> str:
    error = UpstreamError.parse(body)  # with a gateway's wrapped provider error (OpenRouter)
    message = error.text() if error is not None else None
    text = message if message else body[:300].decode("utf-8", "replace")
    return f"the upstream answered HTTP {status}: {text}"


class Sink:
    """Where an attempt's repaired events go: live into the client's open body, or collected."""

    def __init__(self, flow: http.HTTPFlow, live: bool, delivered: bytearray | None = None, raw: bool = False) -> None:
        self.flow = flow
        self.live = live
        self.raw = raw  # live, written as chunks straight to a client that has our head (send_raw_to_client)
        self.delivered = delivered if delivered is not None else bytearray()
        self.last_sent = time.monotonic()
        self.comments = 0

    async def send(self, events: list[bytes]) -> None:
        data = [e for e in events if e]
        if not data:
            return
        if self.live:
            if self.raw:
                joined = b"".join(data)
                result = await proxy_internals.send_raw_to_client(self.flow, b"%x\r\n%s\r\n" % (len(joined), joined))
            else:
                result = await proxy_internals.send_to_client(self.flow, data)
            if result.kind is proxy_internals.SendKind.GONE:
                raise ClientGone
            if result.kind is not proxy_internals.SendKind.SENT:
                raise RuntimeError(f"cannot write to the client: {result}")
            self.last_sent = time.monotonic()
        self.delivered += b"".join(data)

    async def finish(self) -> None:
        """A raw sink's body ends (the chunked terminator)."""
        if self.raw:
            await proxy_internals.send_raw_to_client(self.flow, b"0\r\n\r\n")

    async def keep_alive(self, interval: float) -> None:
        """While attempts run, a comment whenever the client heard nothing for `interval` seconds
        (between whole events: every send is whole events). Runs until cancelled."""
        while True:
            await asyncio.sleep(max(0.0, self.last_sent + interval - time.monotonic()))
            if time.monotonic() - self.last_sent >= interval:
                try:
                    await self.send([KEEPALIVE_COMMENT])
                except (ClientGone, RuntimeError):
                    return  # the attempt notices the client left by itself
                self.comments += 1


_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"upgrade", b"proxy-connection"}
)
_MAX_ERROR_BODY = 1024 * 1024


def sent_again(client: httpx.AsyncClient, flow: http.HTTPFlow, stream: bool, target: Target | None) -> httpx.Request:
    """The request an extra attempt sends: the flow's own (as the proxy sent it the first time), or the fallback's."""
    if target is not None:
        body = retry_body(target.body, stream)
        return client.build_request(flow.request.method, target.url, headers=target.headers, content=body)
    headers = [(k, v) for k, v in flow.request.headers.fields if k.lower() not in _HOP_BY_HOP]
    body = retry_body(flow.request.raw_content or b"", stream)
    return client.build_request(flow.request.method, flow.request.url, headers=headers, content=body)


async def unless_client_leaves(flow: http.HTTPFlow, work: Awaitable[Any]) -> Any:
    """`work`'s result; ClientGone (and `work` cancelled) as soon as the client leaves."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.05)
            if done:
                return task.result()
            if client_gone(flow):
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def read_bounded(response: httpx.Response) -> bytes:
    """An error status's body, or a JSON answer to a streamed retry: at most about 1 MiB kept."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > _MAX_ERROR_BODY:
            break
    return bytes(body)


async def read_all(response: httpx.Response) -> bytes:
    return b"".join([chunk async for chunk in response.aiter_raw()])
