"""Runs `mitmdump -s addons/kimi.py` as a subprocess in reverse mode, on 127.0.0.1 only (the
shared launcher kimiwire.launch, with a test's tmp_path for its files and checks at exit)."""

from __future__ import annotations

import pathlib
from typing import Any

from kimiwire import launch
from kimiwire.launch import ADDON, MITMDUMP, ROOT, free_port

__all__ = ["ADDON", "MITMDUMP", "ROOT", "Mitmdump", "free_port"]


class Mitmdump(launch.Mitmdump):
    """Context manager: starts mitmdump, waits until it listens, stops it and checks it exited cleanly."""

    upstream: Any = None  # the server behind it, when tests.support.proxied started both

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
        self.capture_dir = tmp_path / "captures"
        options = {"kimi_capture_dir": str(self.capture_dir), **(options or {})} if addon else dict(options or {})
        super().__init__(
            upstream_url,
            tmp_path / "mitm-conf",
            options,
            addon=ADDON if addon else None,
            flows_path=self.flows_path,
            extra_args=extra_args or [],
        )

    def __enter__(self) -> Mitmdump:
        self.start()
        return self

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
