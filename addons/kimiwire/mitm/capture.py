"""Capture files: every chat-completions flow, appended as it ends, to one mitmproxy flow file
per proxy run. Readable with mitmproxy.io.FlowReader, `mitmdump -nr` and mitmweb.

In each saved flow the request is what the client sent (before repair), the response is what
the upstream sent (status, headers, full raw body), and `metadata["kimiwire"]` holds the body
sent upstream, the body delivered to the client, the repairs, timings, flavor and policies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from typing import Any, BinaryIO

from mitmproxy import http
from mitmproxy.io import tnetstring

from kimiwire.wire.redaction import redact_header_fields

logger = logging.getLogger("kimiwire")


def saved_state(
    flow: http.HTTPFlow,
    client_request: dict | None = None,
    upstream_headers: Any = None,
    upstream_body: bytes | None = None,
) -> dict:
    """The flow's serialized state as it goes into a capture: the request as the client sent it
    (`client_request`, a request state taken before repair), the raw upstream response, no
    secrets. The same format `FlowWriter` writes, without building a flow again."""
    state = flow.get_state()
    if isinstance(client_request, dict):
        state["request"] = client_request
    state["backup"] = None
    state["request"]["headers"] = redact_header_fields(state["request"]["headers"])
    response = state.get("response")
    if isinstance(response, dict):
        if upstream_headers is not None:
            response["headers"] = tuple(upstream_headers)
        if upstream_body is not None:
            response["content"] = upstream_body
        response["headers"] = redact_header_fields(response["headers"])
    return state


class CaptureFile:
    """Appends flows to `<folder>/kimiwire-<start time>.mitm`, created on first use (folder 0700,
    file 0600), flushed after every flow. A write error is logged once and never raises."""

    def __init__(self, folder: str | os.PathLike[str], name: str = "", started_at: float | None = None) -> None:
        self.folder = pathlib.Path(folder)
        if not name:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at or time.time()))
            name = f"kimiwire-{stamp}-{os.getpid()}.mitm"
        self.path = self.folder / name
        self.flows_written = 0
        self._file: BinaryIO | None = None
        self._failed = False

    def _open(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(descriptor, "ab")

    def write(self, state: dict) -> bool:
        """Append one flow, given as its serialized state (see `saved_state`)."""
        if self._failed:
            return False
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            tnetstring.dump(state, self._file)
            self._file.flush()
            self.flows_written += 1
            return True
        except Exception as exc:
            self._failed = True
            logger.error("kimiwire: cannot write captures to %s (%s); capturing is off for this run", self.path, exc)
            return False

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None
