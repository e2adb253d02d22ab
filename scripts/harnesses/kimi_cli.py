"""kimi-cli, Moonshot's own agent (PyPI `kimi-cli`, on its LLM layer `kosong`, whose `kimi`
provider streams chat completions with Moonshot's fields): `kimi --quiet -p TASK` runs one prompt,
approves tools itself and prints the final message. Providers and models in
`~/.kimi/config.toml` (`KIMI_SHARE_DIR` moves the folder); its tool that reads a file is
`ReadFile(path)`. 1.51.0 is the last release that runs: 1.52.0, the final one, only prints that
the package is archived in favour of Kimi Code CLI (its `kimi_cli/deprecation.py`)."""

from __future__ import annotations

import pathlib

from .base import KEY_PLACEHOLDER, MODEL, PipHarness, Workspace


class KimiCli(PipHarness):
    name = "kimi-cli"
    title = "kimi-cli (kosong)"
    versions = ("1.51.0",)
    read_tool = "ReadFile"
    package, script, python_minor = "kimi-cli", "kimi", 12
    home_variable, home_folder = "KIMI_SHARE_DIR", ".kimi"

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        text = f"""default_model = "kimiwire"
default_thinking = true

[providers.kimiwire]
type = "kimi"
base_url = "{base_url}"
api_key = "{KEY_PLACEHOLDER}"

[models.kimiwire]
provider = "kimiwire"
model = "{MODEL}"
max_context_size = 262144
capabilities = ["thinking"]
"""
        return ".kimi/config.toml", text

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        config = str(ws.home / self.home_folder / "config.toml")
        return [self.executable(install_dir), "--quiet", "--config-file", config, "-p", task]
