"""Fixed bytes served as a stream (the setting `replay=NAME`, a file of the simulator's
`--replay-dir`): the events of a real server's stream exactly as it wrote them, for measurements
on layouts and turns the simulator would not write itself (scripts/bench.py). A file holds SSE
events separated by blank lines; with `stamp`, STAMP_MARK in an event becomes its send time."""

from __future__ import annotations

import pathlib
import re

STAMP_MARK = b"[sent_at]"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a plain file name: never a path


class ReplayFiles:
    """The replay directory's files, each read once and kept as its list of events."""

    def __init__(self, directory: pathlib.Path | None) -> None:
        self.directory = directory
        self._events: dict[str, list[bytes]] = {}

    def events(self, name: str) -> list[bytes]:
        """The events of file `name`, each with its closing blank line. ValueError when the
        simulator has no replay directory or no such file."""
        events = self._events.get(name)
        if events is not None:
            return events
        if self.directory is None or not NAME.fullmatch(name):
            raise ValueError(f"no replay {name!r}: the simulator was started without --replay-dir")
        try:
            body = (self.directory / name).read_bytes()
        except OSError as exc:
            raise ValueError(f"no replay {name!r} in the replay directory") from exc
        events = [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]
        self._events[name] = events
        return events
