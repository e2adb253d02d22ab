"""Runs `mitmdump -s addons/kimi.py` as a subprocess in reverse mode, on 127.0.0.1 only."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADDON = ROOT / "addons" / "kimi.py"
MITMDUMP = pathlib.Path(sys.executable).parent / "mitmdump"
_LISTENING = re.compile(r"listening at .*?:(\d+)")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mitmdump:
    """Context manager: starts mitmdump, waits until it listens, stops it and checks it exited cleanly."""

    def __init__(
        self,
        upstream_url: str,
        tmp_path: pathlib.Path,
        options: dict[str, object] | None = None,
        addon: bool = True,
        extra_args: list[str] | None = None,
        save_flows: bool = True,
    ) -> None:
        self.flows_path = tmp_path / "flows.mitm" if save_flows else None
        confdir = tmp_path / "mitm-conf"
        confdir.mkdir(exist_ok=True)
        self.args = [
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
            "termlog_verbosity=debug",
        ]
        if addon:
            self.args += ["-s", str(ADDON)]
        if self.flows_path:
            self.args += ["-w", str(self.flows_path)]
        self.capture_dir = tmp_path / "captures"
        options = {"kimi_capture_dir": str(self.capture_dir), **(options or {})} if addon else dict(options or {})
        for key, value in options.items():
            self.args += ["--set", f"{key}={value}"]
        self.args += extra_args or []
        self.lines: list[str] = []
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _drain(self) -> None:
        assert self._proc and self._proc.stdout
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.port is None and (m := _LISTENING.search(line)):
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def __enter__(self) -> Mitmdump:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(30) or self.port is None:
            self.stop()
            raise RuntimeError(f"mitmdump did not start:\n{self.output}")
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

    def __exit__(self, *exc) -> None:
        rc = self.stop()
        if exc[0] is None:
            assert rc == 0, f"mitmdump exited with {rc}:\n{self.output}"
            assert "Traceback" not in self.output, self.output

    def read_flows(self, path: pathlib.Path | None = None):
        from mitmproxy import io

        path = path or self.flows_path
        assert path
        with open(path, "rb") as f:
            return list(io.FlowReader(f).stream())

    def capture_files(self) -> list[pathlib.Path]:
        return sorted(self.capture_dir.glob("kimiwire-*.mitm"))
