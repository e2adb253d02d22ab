"""`kimi_flavor=auto`: which engine and model family each upstream runs, found in the background.

At start every reverse-mode upstream is asked `GET /v1/models` (a task of its own: start-up and
clients never wait for it); the first answers of each upstream refine what it said (wire/
detection.py reads them). An upstream whose listing did not come is asked again after a failed
flow or when a flow names another API path, at most MAX_PROBES times, REPROBE_AFTER seconds
apart. Only the upstreams the proxy was started for are asked, never hosts that clients name
(regular mode): those are known from their answers only. A server that never answers keeps the
flavor its host gives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from kimiwire.wire.servers.detection import Detection, models_path

logger = logging.getLogger("kimiwire")


@dataclass
class _Upstream:
    origin: str  # scheme://host:port
    host: str
    named: bool = False  # a reverse-mode upstream: the only ones asked (not hosts clients name)
    detection: Detection = field(default_factory=Detection)
    listing_read: bool = False
    probes: int = 0
    last_probe: float = float("-inf")
    probing: bool = False
    problem: str | None = None  # why the last probe found no listing
    record: dict[str, Any] = field(default_factory=dict)  # what goes on each flow, rebuilt on change


def reverse_upstreams(modes: Sequence[str]) -> list[str]:
    """The http(s) origins of mitmproxy's `reverse:URL[@listen]` modes."""
    origins = []
    for mode in modes:
        if not mode.startswith("reverse:"):
            continue
        url = mode.removeprefix("reverse:")
        head, at, listen = url.rpartition("@")  # `@PORT` or `@HOST:PORT`: where the proxy listens
        if at and "/" not in listen:
            url = head
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            origins.append(_origin(parts.scheme, parts.hostname, parts.port or default))
    return origins


class UpstreamDetector:
    MAX_UPSTREAMS = 64  # upstreams come from requests (regular mode): bounded whatever they are
    MAX_PROBES = 3
    REPROBE_AFTER = 30.0
    TIMEOUT = 5.0
    MAX_LISTING = 1 << 20

    def __init__(
        self,
        client: Callable[[], httpx.AsyncClient],
        learned: Callable[[str, Detection], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._learned = learned  # called when an upstream's detection changed (host, detection)
        self._clock = clock
        self.enabled = True  # kimi_flavor is auto
        self._upstreams: dict[str, _Upstream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what the addon asks ------------------------------------------------------------------

    def start(self, origins: Sequence[str]) -> None:
        for origin in origins:
            upstream = self._upstream(origin, urlsplit(origin).hostname or "")
            if upstream is not None:
                upstream.named = True
                self._probe_soon(upstream, "/v1/models")

    def seen(self, scheme: str, host: str, port: int, path: str) -> dict[str, Any] | None:
        """A chat flow to this upstream starts: what is known (for its record), and a probe of
        the listing beside its path when none was read and one is due."""
        upstream = self._upstream(_origin(scheme, host, port), host)
        if upstream is None:
            return None
        if self._due(upstream):
            self._probe_soon(upstream, models_path(path))
        return upstream.record.copy() if upstream.record else None

    def wants_answer(self, scheme: str, host: str, port: int) -> bool:
        upstream = self._upstreams.get(_origin(scheme, host, port))
        return upstream is not None and upstream.detection.wants_answers

    def read_answer(self, scheme: str, host: str, port: int, body: bytes, streamed: bool) -> None:
        upstream = self._upstreams.get(_origin(scheme, host, port))
        if upstream is None or not upstream.detection.wants_answers:
            return
        detection = upstream.detection
        before = (detection.engine, detection.family)
        detection.read_answer(body, streamed)
        if (detection.engine, detection.family) != before:
            self._changed(upstream, "its answers")

    def failed(self, scheme: str, host: str, port: int, path: str) -> None:
        """A flow to this upstream failed: its listing is asked again, when one is due."""
        upstream = self._upstreams.get(_origin(scheme, host, port))
        if upstream is not None and self._due(upstream):
            self._probe_soon(upstream, models_path(path))

    def detections(self) -> dict[str, dict[str, Any]]:
        """Every upstream's detection, for kimi.stats."""
        return {
            origin: upstream.detection.as_dict() | {"probes": upstream.probes, "probe_problem": upstream.problem}
            for origin, upstream in self._upstreams.items()
        }

    def each(self) -> list[tuple[str, Detection]]:
        return [(u.host, u.detection) for u in self._upstreams.values()]

    async def settled(self) -> None:
        """Until the probes under way are over."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        """Shutdown: probes under way are dropped."""
        for task in list(self._tasks):
            task.cancel()

    # -- probing ------------------------------------------------------------------------------

    def _upstream(self, origin: str, host: str) -> _Upstream | None:
        upstream = self._upstreams.get(origin)
        if upstream is None:
            if len(self._upstreams) >= self.MAX_UPSTREAMS:
                return None
            upstream = self._upstreams[origin] = _Upstream(origin, host)
            upstream.detection.read_host(host)
            upstream.record = _record(upstream)
            if upstream.detection.engine_known:
                self._learned(host, upstream.detection)
        return upstream

    def _due(self, upstream: _Upstream) -> bool:
        return (
            self.enabled
            and upstream.named
            and not upstream.listing_read
            and not upstream.probing
            and upstream.probes < self.MAX_PROBES
            and self._clock() - upstream.last_probe >= self.REPROBE_AFTER
        )

    def _probe_soon(self, upstream: _Upstream, path: str) -> None:
        if not self.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        upstream.probing = True
        upstream.probes += 1
        upstream.last_probe = self._clock()
        task = loop.create_task(self._probe(upstream, path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, upstream: _Upstream, path: str) -> None:
        url = upstream.origin + path
        try:
            body, problem = await asyncio.wait_for(self._fetch(url), self.TIMEOUT)
        except TimeoutError:
            body, problem = None, f"no answer within {self.TIMEOUT:g} s"
        except Exception as exc:  # a probe never breaks anything: it only teaches less
            body, problem = None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        finally:
            upstream.probing = False
        if body is not None and not upstream.detection.read_models(body):
            problem = "the answer is not a model list"
        upstream.problem = problem
        if problem is None:
            upstream.listing_read = True
            self._changed(upstream, f"GET {path}")
        else:
            logger.info(
                "kimiwire: upstream %s: GET %s: %s; %s (answers refine it)",
                upstream.origin,
                path,
                problem,
                upstream.detection.summary(),
            )

    async def _fetch(self, url: str) -> tuple[bytes | None, str | None]:
        client = self._client()
        async with client.stream("GET", url, headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                return None, f"HTTP {response.status_code}"
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.MAX_LISTING:
                    return None, f"listing larger than {self.MAX_LISTING} bytes"
            return bytes(body), None

    def _changed(self, upstream: _Upstream, what: str) -> None:
        upstream.record = _record(upstream)
        flavor = upstream.detection.flavor(upstream.host)
        logger.info(
            "kimiwire: upstream %s: %s (read from %s); flavor %s (kimi_flavor=auto)",
            upstream.origin,
            upstream.detection.summary(),
            what,
            flavor.value,
        )
        self._learned(upstream.host, upstream.detection)


def _origin(scheme: str, host: str, port: int) -> str:
    default = 443 if scheme == "https" else 80
    hostport = f"[{host}]" if ":" in host else host
    return f"{scheme}://{hostport}" if port == default else f"{scheme}://{hostport}:{port}"


def _record(upstream: _Upstream) -> dict[str, Any]:
    detection = upstream.detection
    return {
        "engine": detection.engine.value,
        "family": detection.family.value,
        "flavor": detection.flavor(upstream.host).value,
        "from": [e.sign for e in detection.evidence if e.strong],
    }
