"""Capture files: every chat-completions flow, appended as it ends, to one mitmproxy flow file
per proxy run. Readable with mitmproxy.io.FlowReader, `mitmdump -nr` and mitmweb.

In each saved flow the request is what the client sent (before repair), the response is what
the upstream sent (status, headers, full raw body), and `metadata["kimiwire"]` holds the body
sent upstream, the body delivered to the client (`delivered`, left out when it is byte for byte
the upstream's: `delivered_body` reads either; `upstream_request`, the body sent upstream, is
likewise left out when it is the client's: `upstream_request_body`), the repairs, timings, flavor and policies.
Credentials are redacted (`wire/capture/redaction.py`).

The file only ever holds whole records: each flow is serialized first, then written at the end of
the last whole record; when a write fails (a full disk) the file is cut back to its last whole
record, the flow is counted as lost, and the next flow tries again. Written records are synced to
disk (fsync) by a helper thread: an fsync can take long on a busy machine, time the event loop,
and every stream on it, would otherwise wait. It syncs at
most once per SYNC_INTERVAL while flows keep coming (one fsync per flow cost a thread wake-up and a
journal commit each), and close() syncs the rest: a flow is in the file (for any reader, and after
a killed proxy) when it ends, on the disk (after a power loss) within about a second.

Per flow the work is kept small (it runs on the event loop): the state is built from the flow's
parts without mitmproxy's deep copies and per-field typing inspection, and encoded by
`wire/codecs/tnetstring.py` (mitmproxy's format, byte for byte, faster).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import pathlib
import stat
import threading
import time
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from mitmproxy import http
from mitmproxy.connection import Connection
from mitmproxy.version import FLOW_FORMAT_VERSION

from kimiwire.wire.capture.redaction import Redactor
from kimiwire.wire.codecs import tnetstring

logger = logging.getLogger("kimiwire")

# Seconds between two fsyncs of a capture while flows keep coming (close() syncs the rest).
SYNC_INTERVAL = 1.0
# Files a capture folder may hold and still be treated as kimiwire's own (and made private).
_CAPTURE_FOLDER_FILES = (".gitkeep", "README.md", ".gitignore")


def delivered_body(flow: http.HTTPFlow) -> bytes:
    """What the client received: the record's `delivered`, or the upstream's body (the flow's
    response) where the record leaves it out because the two are the same bytes."""
    record = flow.metadata.get("kimiwire") or {}
    delivered = record.get("delivered")
    if isinstance(delivered, bytes):
        return delivered
    return (flow.response.raw_content or b"") if flow.response is not None else b""


def upstream_request_body(flow: http.HTTPFlow) -> bytes:
    """What the proxy sent upstream: the record's `upstream_request`, or the request's body where
    the capture leaves it out because the proxy sent it as the client did."""
    record = flow.metadata.get("kimiwire") or {}
    sent = record.get("upstream_request")
    if isinstance(sent, bytes):
        return sent
    return flow.request.raw_content or b""


def saved_state(
    flow: http.HTTPFlow,
    client_request: dict[str, Any] | None = None,
    upstream_headers: Any = None,
    upstream_body: bytes | None = None,
    redactor: Redactor | None = None,
) -> dict[str, Any]:
    """The flow's serialized state as it goes into a capture: the request as the client sent it
    (`client_request`, a request state taken before repair), the raw upstream response, no
    secrets. Equal to `flow.get_state()` with those parts replaced (tests/unit/mitm/test_capture_state.py),
    built without its copies: the metadata's values are the flow's own, so the state is written
    before the flow changes again (`CaptureFile.write` right after)."""
    redactor = redactor or Redactor()
    request = dict(client_request) if isinstance(client_request, dict) else flow.request.get_state()
    client_body = request.get("content")
    _redact_message(request, redactor, is_request=True)
    response = flow.response.get_state() if flow.response is not None else None
    if response is not None:
        if upstream_headers is not None:
            response["headers"] = tuple(upstream_headers)
        if upstream_body is not None:
            response["content"] = upstream_body
        _redact_message(response, redactor, is_request=False)
    metadata = dict(flow.metadata)
    record = metadata.get("kimiwire")
    if isinstance(record, dict) and isinstance(record.get("upstream_request"), bytes):
        sent = record["upstream_request"]
        if sent == client_body:
            # Sent as the client sent it (nothing repaired): stored once, as the request's body
            # (`upstream_request_body` reads it back), not a second time in the record.
            metadata["kimiwire"] = {k: v for k, v in record.items() if k != "upstream_request"}
        else:
            metadata["kimiwire"] = {**record, "upstream_request": redactor.json_body(sent)}
    return {  # the keys and order of mitmproxy's HTTPFlow.get_state()
        "version": FLOW_FORMAT_VERSION,
        "type": flow.type,
        "id": flow.id,
        "error": flow.error.get_state() if flow.error else None,
        "client_conn": connection_state(flow.client_conn),
        "server_conn": connection_state(flow.server_conn),
        "intercepted": flow.intercepted,
        "is_replay": flow.is_replay,
        "marked": flow.marked,
        "metadata": metadata,
        "comment": flow.comment,
        "timestamp_created": flow.timestamp_created,
        "backup": None,
        "request": request,
        "response": response,
        "websocket": flow.websocket.get_state() if flow.websocket else None,
    }


def connection_state(connection: Connection) -> dict[str, Any]:
    """`connection.get_state()`, equal (tests/unit/mitm/test_capture_state.py) and about ten times cheaper:
    mitmproxy converts every field by its declared type (typing inspection per field, each time);
    here each field's conversion is looked up once per class."""
    fields = _connection_fields(type(connection))
    if fields is None:
        whole: dict[str, Any] = connection.get_state()
        return whole
    state = {}
    for name, convert in fields:
        value = getattr(connection, name)
        state[name] = value if convert is None or value is None else convert(value)
    return state


@functools.cache
def _connection_fields(cls: type) -> tuple[tuple[str, Callable[[Any], Any] | None], ...] | None:
    """(name, conversion or None when the value is its own state) of each serialized field, or None
    when a field's type is one this does not know (mitmproxy's own get_state serves then)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for field in dataclasses.fields(cls):
        if field.metadata.get("serialize", True) is False:
            continue
        convert = _conversion(hints[field.name])
        if convert is False:
            return None
        fields.append((field.name, convert))
    return tuple(fields)


def _conversion(declared: Any) -> Callable[[Any], Any] | Literal[False] | None:
    """How mitmproxy's serializer turns a value of the `declared` type into its state (for values
    of that type): None for values kept as they are, False for a type not known here."""
    origin = typing.get_origin(declared)
    if origin in (types.UnionType, typing.Union):
        arguments = [a for a in typing.get_args(declared) if a is not type(None)]
        return _conversion(arguments[0]) if len(arguments) == 1 else False
    if origin is typing.Literal or origin is tuple or declared in (str, bytes, bool):
        return None  # literals, addresses and server specs (tuples of str and int) are kept
    if declared is float:
        return float
    if isinstance(declared, type) and hasattr(declared, "get_state"):
        return _get_state
    if origin is collections.abc.Sequence or origin is list:
        (item,) = typing.get_args(declared)
        convert = _conversion(item)
        if convert is False:
            return False
        return list if convert is None else functools.partial(_converted_list, convert)
    return False


def _redact_message(message: dict[str, Any], redactor: Redactor, is_request: bool) -> None:
    message["headers"] = redactor.header_fields(message["headers"])
    if message.get("trailers"):
        message["trailers"] = redactor.header_fields(message["trailers"])
    if is_request:
        message["path"] = redactor.path(message["path"])
        if isinstance(message.get("content"), bytes):
            message["content"] = redactor.json_body(message["content"])


def _get_state(value: Any) -> Any:
    return value.get_state()


def _converted_list(convert: Callable[[Any], Any], values: Any) -> list[Any]:
    return [convert(value) for value in values]


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
        self._position: int | None = None  # the descriptor's offset, when known (saves a seek per write)
        self._failing = False
        self._sync_wanted = threading.Event()
        self._closed = threading.Event()  # wakes the sync thread from its pause at close
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
        self._size = self._position = os.lseek(fd, 0, os.SEEK_END)
        return fd

    def write(self, state: dict[str, Any] | bytes | BaseException) -> bool:
        """Append one flow, given as its serialized state (see `saved_state`) or that state already
        encoded, whole or not at all; an exception (the state could not be made) counts the flow as lost."""
        if isinstance(state, BaseException):
            return self._lost(state)
        try:
            record = state if isinstance(state, bytes) else tnetstring.dumps(state)
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
        if not self._sync_wanted.is_set():
            self._sync_wanted.set()

    def _sync_loop(self) -> None:
        """fsync after writes, at most once per SYNC_INTERVAL while flows keep coming."""
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            fd = self._fd
            if self._closing or fd is None:
                return
            self._sync(fd)
            self._closed.wait(SYNC_INTERVAL)

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self.last_error = f"fsync: {type(exc).__name__}: {exc}"
            logger.error(
                "kimiwire: cannot sync the capture %s to disk (%s); its last flows may be lost", self.path, exc
            )

    def _write_at(self, data: bytes, offset: int) -> int:
        assert self._fd is not None
        if self._position != offset:
            os.lseek(self._fd, offset, os.SEEK_SET)
        self._position = None  # until the write is known to have succeeded
        written = self._write(self._fd, data)
        if written <= 0:
            raise OSError(errno.EIO, "nothing written")
        self._position = offset + written
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
            self._closed.set()
            self._syncer.join(timeout=10)
            self._syncer = None
            self._closing = False
            self._closed.clear()
        if self._fd is not None:
            self._sync(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
