"""Capture files: every chat-completions flow, appended as it ends, to one mitmproxy flow file
per proxy run. Readable with mitmproxy.io.FlowReader, `mitmdump -nr` and mitmweb.

In each saved flow the request is what the client sent (before repair), the response is what
the upstream sent (status, headers, full raw body), and `metadata["kimiwire"]` holds the body
sent upstream, the body delivered to the client, the repairs, timings, flavor and policies.
Credentials are redacted (`wire/redaction.py`).

The file only ever holds whole records: each flow is serialized first, then written at the end of
the last whole record; when a write fails (a full disk) the file is cut back to its last whole
record, the flow is counted as lost, and the next flow tries again. Written records are synced to
disk (fsync) by a helper thread: an fsync took 4 ms at the median and up to 115 ms on this project's
busy test machine, time the event loop, and every stream on it, would otherwise wait.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.io import tnetstring

from kimiwire.wire.redaction import Redactor

logger = logging.getLogger("kimiwire")

# Files a capture folder may hold and still be treated as kimiwire's own (and made private).
_CAPTURE_FOLDER_FILES = (".gitkeep", "README.md", ".gitignore")


def saved_state(
    flow: http.HTTPFlow,
    client_request: dict | None = None,
    upstream_headers: Any = None,
    upstream_body: bytes | None = None,
    redactor: Redactor | None = None,
) -> dict:
    """The flow's serialized state as it goes into a capture: the request as the client sent it
    (`client_request`, a request state taken before repair), the raw upstream response, no
    secrets. The same format `FlowWriter` writes, without building a flow again."""
    redactor = redactor or Redactor()
    state = flow.get_state()
    if isinstance(client_request, dict):
        state["request"] = client_request
    state["backup"] = None
    _redact_message(state["request"], redactor, is_request=True)
    response = state.get("response")
    if isinstance(response, dict):
        if upstream_headers is not None:
            response["headers"] = tuple(upstream_headers)
        if upstream_body is not None:
            response["content"] = upstream_body
        _redact_message(response, redactor, is_request=False)
    record = state.get("metadata", {}).get("kimiwire")
    if isinstance(record, dict) and isinstance(record.get("upstream_request"), bytes):
        state["metadata"] = {**state["metadata"], "kimiwire": dict(record)}
        state["metadata"]["kimiwire"]["upstream_request"] = redactor.json_body(record["upstream_request"])
    return state


def _redact_message(message: dict, redactor: Redactor, is_request: bool) -> None:
    message["headers"] = redactor.header_fields(message["headers"])
    if message.get("trailers"):
        message["trailers"] = redactor.header_fields(message["trailers"])
    if is_request:
        message["path"] = redactor.path(message["path"])
        if isinstance(message.get("content"), bytes):
            message["content"] = redactor.json_body(message["content"])


class CaptureFile:
    """Appends flows to `<folder>/kimiwire-<start time>-<pid>.mitm`, created on first use (folder
    0700, file 0600). Never raises from `write`: a failure is logged and counted."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        name: str = "",
        started_at: float | None = None,
        write: Callable[[int, bytes], int] = os.write,
    ) -> None:
        self.folder = pathlib.Path(folder)
        if not name:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at or time.time()))
            name = f"kimiwire-{stamp}-{os.getpid()}.mitm"
        self.path = self.folder / name
        self.flows_written = 0
        self.flows_lost = 0
        self.last_error: str | None = None
        self._write = write  # injectable, to test a disk that fills up
        self._fd: int | None = None
        self._size = 0  # end of the last whole record
        self._cut = False  # the file may hold bytes past _size (a failed cut)
        self._failing = False
        self._sync_wanted = threading.Event()
        self._syncer: threading.Thread | None = None
        self._closing = False

    # -- start-up ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder (0700) and prove a file can be created in it; raises OSError with the
        reason when it cannot. A folder holding only kimiwire's files (the repository's own
        `captures/`, whose mode git does not keep) is made 0700 too."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.folder))
        mode = stat.S_IMODE(self.folder.stat().st_mode)
        if mode & 0o077:
            if self._only_captures_inside():
                os.chmod(self.folder, 0o700)
            else:
                logger.warning(
                    "kimiwire: the capture folder %s is open to other users (mode %o); the files are 0600",
                    self.folder,
                    mode,
                )
        probe = self.folder / f".kimiwire-probe-{os.getpid()}"
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(descriptor)
        probe.unlink()

    def _only_captures_inside(self) -> bool:
        for entry in self.folder.iterdir():
            name = entry.name
            if name not in _CAPTURE_FOLDER_FILES and not (name.startswith("kimiwire-") and name.endswith(".mitm")):
                return False
        return True

    # -- writing -------------------------------------------------------------------------------

    def _open(self) -> int:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._size = os.lseek(fd, 0, os.SEEK_END)
        return fd

    def write(self, state: dict) -> bool:
        """Append one flow, given as its serialized state (see `saved_state`), whole or not at all."""
        try:
            record = tnetstring.dumps(state)
        except Exception as exc:
            return self._lost(exc)
        try:
            if self._fd is None:
                self._fd = self._open()
            if self._cut:
                os.ftruncate(self._fd, self._size)
                self._cut = False
            offset = 0
            while offset < len(record):
                offset += self._write_at(record[offset:], self._size + offset)
        except OSError as exc:
            self._cut_back()
            return self._lost(exc)
        self._size += len(record)
        self.flows_written += 1
        self._request_sync()
        if self._failing:
            self._failing = False
            logger.warning("kimiwire: captures to %s work again (%d flows lost so far)", self.path, self.flows_lost)
        return True

    def _request_sync(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="kimiwire-capture-sync", daemon=True)
            self._syncer.start()
        self._sync_wanted.set()

    def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            fd = self._fd
            if self._closing or fd is None:
                return
            try:
                os.fsync(fd)
            except OSError as exc:
                logger.warning("kimiwire: cannot sync the capture %s to disk (%s)", self.path, exc)

    def _write_at(self, data: bytes, offset: int) -> int:
        assert self._fd is not None
        os.lseek(self._fd, offset, os.SEEK_SET)
        written = self._write(self._fd, data)
        if written <= 0:
            raise OSError(errno.EIO, "nothing written")
        return written

    def _cut_back(self) -> None:
        """Remove a partly written record, so the file ends with a whole one."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._cut = True  # try again before the next write

    def _lost(self, exc: BaseException) -> bool:
        self.flows_lost += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._failing:
            self._failing = True
            logger.error(
                "kimiwire: cannot write captures to %s (%s); this flow is lost, later flows will be tried",
                self.path,
                exc,
            )
        else:
            logger.warning("kimiwire: capture write failed again (%s); %d flows lost", exc, self.flows_lost)
        return False

    def summary(self) -> str:
        text = f"{self.flows_written} flows captured in {self.path}"
        if self.flows_lost:
            text += f"; {self.flows_lost} flows LOST (last error: {self.last_error})"
        return text

    def close(self) -> None:
        if self._syncer is not None:
            self._closing = True
            self._sync_wanted.set()
            self._syncer.join(timeout=10)
            self._syncer = None
            self._closing = False
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
