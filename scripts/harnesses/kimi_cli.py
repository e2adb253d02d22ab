"""kimi-cli, Moonshot's own agent (PyPI `kimi-cli`, on its LLM layer `kosong`, whose `kimi`
provider streams chat completions with Moonshot's fields): `kimi --quiet -p TASK` runs one prompt,
approves tools itself and prints the final message. Providers and models in
`~/.kimi/config.toml` (`KIMI_SHARE_DIR` moves the folder); its tool that reads a file is
`ReadFile(path)`. 1.51.0 is the last release that runs: 1.52.0, the final one, only prints that
the package is archived in favour of Kimi Code CLI (its `kimi_cli/deprecation.py`)."""

from __future__ import annotations

import pathlib

from .base import API_KEY, MODEL, Harness, Workspace, pip_harness, python_at_least


class KimiCli(Harness):
    name = "kimi-cli"
    title = "kimi-cli (kosong)"
    versions = ("1.51.0",)
    read_tool = "ReadFile"

    def install(self, version: str) -> pathlib.Path:
        return pip_harness(f"kimi-cli-{version}", f"kimi-cli=={version}", python_at_least(12))

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        text = f"""default_model = "kimiwire"
default_thinking = true

[providers.kimiwire]
type = "kimi"
base_url = "{base_url}"
api_key = "YOUR_API_KEY"

[models.kimiwire]
provider = "kimiwire"
model = "{MODEL}"
max_context_size = 262144
capabilities = ["thinking"]
"""
        return ".kimi/config.toml", text

    def prepare(self, version: str, install_dir: pathlib.Path, ws: Workspace, base_url: str) -> None:
        name, text = self.config(version, base_url)
        target = ws.home / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("YOUR_API_KEY", API_KEY))

    def env(self, version: str, install_dir: pathlib.Path, ws: Workspace) -> dict[str, str]:
        return {**super().env(version, install_dir, ws), "KIMI_SHARE_DIR": str(ws.home / ".kimi")}

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        kimi = install_dir / "venv" / "bin" / "kimi"
        return [str(kimi), "--quiet", "--config-file", str(ws.home / ".kimi" / "config.toml"), "-p", task]
