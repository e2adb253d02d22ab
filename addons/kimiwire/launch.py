"""Starting mitmdump with the addon, and the simulator, as subprocesses on 127.0.0.1 (used by
`scripts/` and `tests/`; no mitmproxy import: it only runs the `mitmdump` next to this Python).

- `ListeningProcess(args)`: starts a command, reads its output in a thread, finds the port in its
  "listening at ...:PORT" line; `stop()` ends it (SIGTERM, then SIGKILL) and returns its exit code.
- `Mitmdump(upstream_url, confdir, ...)`: mitmdump in reverse mode in front of an upstream,
  with the kimiwire addon (or without, `addon=False`) and `--set` options.
- `simulator(port=0, *flags)`: `python -m kimiwire.sim` with its command-line flags.
Each is a context manager.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADDON = ROOT / "addons" / "kimi.py"
MITMDUMP = pathlib.Path(sys.executable).parent / "mitmdump"
_LISTENING = re.compile(r"listening at (?:http://)?[\w.:\[\]]*?:(\d+)")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) for an IPv4 socket
        return port


class ListeningProcess:
    def __init__(self, args: Sequence[str], start_timeout: float = 30.0, ready: re.Pattern[str] = _LISTENING) -> None:
        """`ready`: the output line that announces the port (its first group)."""
        self.args = list(args)
        self._ready_line = ready
        self.start_timeout = start_timeout
        self.lines: list[str] = []
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _drain(self) -> None:
        assert self._proc and self._proc.stdout
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.port is None and (m := self._ready_line.search(line)):
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def start(self) -> ListeningProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(self.start_timeout) or self.port is None:
            self.stop()
            raise RuntimeError(f"{pathlib.Path(self.args[0]).name} did not start:\n{self.output}")
        return self

    def stop(self) -> int:
        assert self._proc
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        time.sleep(0.05)  # let the drain thread read the last lines
        return self._proc.returncode

    def __enter__(self) -> ListeningProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mitmdump(ListeningProcess):
    def __init__(
        self,
        upstream_url: str,
        confdir: pathlib.Path,
        options: Mapping[str, object] | None = None,
        addon: pathlib.Path | None = ADDON,
        flows_path: pathlib.Path | None = None,
        extra_args: Sequence[str] = (),
        verbosity: str = "debug",
    ) -> None:
        confdir.mkdir(parents=True, exist_ok=True)
        args = [
            str(MITMDUMP),
            "--listen-host",
            "127.0.0.1",
            "-p",
            "0",
            "--mode",
            f"reverse:{upstream_url}",
            "--set",
            f"confdir={confdir}",
            "--set",
            f"termlog_verbosity={verbosity}",
        ]
        if addon is not None:
            args += ["-s", str(addon)]
        if flows_path is not None:
            args += ["-w", str(flows_path)]
        for key, value in (options or {}).items():
            args += ["--set", f"{key}={value}"]
        super().__init__([*args, *extra_args])

    def __enter__(self) -> Mitmdump:
        self.start()
        return self


def simulator(port: int = 0, *flags: str) -> ListeningProcess:
    """The Kimi server simulator (`scripts/sim`) as a subprocess."""
    return ListeningProcess([sys.executable, "-m", "kimiwire.sim", "--port", str(port), *flags])
