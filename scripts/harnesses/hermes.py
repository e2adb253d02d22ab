"""hermes-agent (Nous Research, PyPI `hermes-agent`): `hermes chat -q TASK --yolo` answers one query
without asking. A custom OpenAI-compatible endpoint in `~/.hermes/config.yaml` (`model.provider:
custom`, `base_url`, `default`: the user guide's configuration page; `HERMES_HOME` moves the
folder); its tool that reads a file is `read_file(path)`."""

from __future__ import annotations

import pathlib

import yaml

from .base import KEY_PLACEHOLDER, MODEL, PipHarness, Workspace


class Hermes(PipHarness):
    name = "hermes"
    title = "hermes-agent"
    versions = ("0.19.0",)
    read_tool = "read_file"
    package, script = "hermes-agent", "hermes"
    home_variable, home_folder = "HERMES_HOME", ".hermes"

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        settings = {
            "model": {
                "provider": "custom",
                "base_url": base_url,
                "default": MODEL,
                "api_key": KEY_PLACEHOLDER,
                "context_length": 262144,
            }
        }
        return ".hermes/config.yaml", yaml.safe_dump(settings, sort_keys=False)

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        return [self.executable(install_dir), "chat", "-q", task, "--yolo"]
