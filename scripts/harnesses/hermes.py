"""hermes-agent (Nous Research, PyPI `hermes-agent`): `hermes chat -q TASK --yolo` answers one query
without asking. A custom OpenAI-compatible endpoint in `~/.hermes/config.yaml` (`model.provider:
custom`, `base_url`, `default`: the user guide's configuration page; `HERMES_HOME` moves the
folder); its tool that reads a file is `read_file(path)`."""

from __future__ import annotations

import pathlib

import yaml

from .base import API_KEY, MODEL, Harness, Workspace, pip_harness


class Hermes(Harness):
    name = "hermes"
    title = "hermes-agent"
    versions = ("0.19.0",)
    read_tool = "read_file"

    def install(self, version: str) -> pathlib.Path:
        return pip_harness(f"hermes-agent-{version}", f"hermes-agent=={version}")

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        settings = {
            "model": {
                "provider": "custom",
                "base_url": base_url,
                "default": MODEL,
                "api_key": "YOUR_API_KEY",
                "context_length": 262144,
            }
        }
        return ".hermes/config.yaml", yaml.safe_dump(settings, sort_keys=False)

    def prepare(self, version: str, install_dir: pathlib.Path, ws: Workspace, base_url: str) -> None:
        name, text = self.config(version, base_url)
        target = ws.home / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("YOUR_API_KEY", API_KEY))

    def env(self, version: str, install_dir: pathlib.Path, ws: Workspace) -> dict[str, str]:
        return {**super().env(version, install_dir, ws), "HERMES_HOME": str(ws.home / ".hermes")}

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        return [str(install_dir / "venv" / "bin" / "hermes"), "chat", "-q", task, "--yolo"]
