"""The `flow.response.stream` callable around a StreamRepairer, with mitmproxy's rules kept:
never an empty chunk mid-stream (it would end a chunked body), one chunk per upstream read, and
an exception turns the rest of the stream into passthrough instead of dropping data.

No mitmproxy import: it only needs to be a callable `bytes -> list[bytes]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .stream_repair import StreamRepairer

logger = logging.getLogger("kimiwire")


class RepairingStream:
    def __init__(self, repairer: StreamRepairer, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.repairer = repairer
        self.on_error = on_error
        self.upstream = bytearray()  # every byte the upstream sent, for the capture and replays
        self.delivered = bytearray()  # every byte sent to the client
        self.calls = 0
        self.ended = False
        self.failed = False
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None

    def __call__(self, data: bytes) -> list[bytes]:
        self.calls += 1
        if data:
            now = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = now
            self.last_byte_at = now
            self.upstream += data
        else:
            self.ended = True
        if self.failed:
            return self._deliver([data] if data else [])
        undecoded = self.repairer.undecoded()
        try:
            out = self.repairer.feed(data) if data else self.repairer.end()
        except Exception as exc:
            # Nothing may be lost: what the repairer held goes out unrepaired, then the raw bytes
            # it had not yet decoded and this chunk; the rest of the stream passes through.
            self.failed = True
            out = []
            try:
                self.repairer.release_held(out, include_undecoded=False)
            except Exception:
                logger.exception("kimiwire: could not release held stream data")
            out.append(undecoded + data)
            if self.on_error is not None:
                self.on_error(exc)
        return self._deliver(out)

    def _deliver(self, out: list[bytes]) -> list[bytes]:
        joined = b"".join(out)
        if not joined:
            return []
        self.delivered += joined
        return [joined]
