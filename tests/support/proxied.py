"""An upstream plus mitmdump in front of it: the pair the end-to-end tests start.

`proxied(upstream, tmp_path, options)` starts the upstream in this process (the Kimi simulator for a
`SimSettings`, the recording upstream for a responder `request -> Reply`) or takes one already running
(anything with a `url`), then `mitmdump -s addons/kimi.py` in reverse mode in front of it with the given
`--set` options. Both listen on 127.0.0.1 on a port the OS picks, each is waited for until it listens, and
both are stopped on the way out, the proxy first; starting and stopping are bounded (kimiwire.launch,
kimiwire.sim.server). It yields the proxy, whose `upstream` is the server behind it.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from kimiwire.sim.scripted import RecordedRequest, Reply, ScriptedUpstream
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings

from tests.support.mitm import Mitmdump

__all__ = ["Responder", "Running", "proxied"]

Responder = Callable[[RecordedRequest], Reply]


class Running(Protocol):
    """A server already listening, such as a module's `simulator` fixture."""

    @property
    def url(self) -> str: ...


@contextlib.contextmanager
def proxied(
    upstream: SimSettings | Responder | Running,
    tmp_path: pathlib.Path,
    options: dict[str, object] | None = None,
    **mitmdump: Any,
) -> Iterator[Mitmdump]:
    """`mitmdump` keywords (`save_flows`, `extra_args`, `addon`) go to tests.support.mitm.Mitmdump."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(_started(upstream))
        proxy = stack.enter_context(Mitmdump(server.url, tmp_path, options, **mitmdump))
        proxy.upstream = server
        yield proxy


@contextlib.contextmanager
def _started(upstream: SimSettings | Responder | Running) -> Iterator[Any]:
    if isinstance(upstream, SimSettings):
        with SimulatorThread(upstream) as sim:
            yield sim
    elif hasattr(upstream, "url"):
        yield upstream  # its owner stops it
    else:
        with ScriptedUpstream(upstream) as scripted:
            yield scripted
