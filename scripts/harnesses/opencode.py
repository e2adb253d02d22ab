"""opencode (`opencode-ai` on npm: the binary ships in `opencode-linux-x64`, its postinstall only
links it, so it runs from there). `opencode run` runs one message and prints the answer. A provider
in `~/.config/opencode/opencode.json` on `@ai-sdk/openai-compatible` (opencode.ai/docs/providers);
its `read` tool takes `filePath`."""

from __future__ import annotations

import pathlib

from .base import KEY_ENV, MODEL, Harness, Workspace, npm_harness, pretty_json


class OpenCode(Harness):
    name = "opencode"
    title = "opencode"
    versions = ("1.18.33",)
    read_tool = "read"

    def install(self, version: str) -> pathlib.Path:
        return npm_harness(f"opencode-{version}", {"opencode-ai": version, "opencode-linux-x64": version})

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        settings = {
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                "kimiwire": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Kimi K2 via kimiwire",
                    "options": {"baseURL": base_url, "apiKey": f"{{env:{KEY_ENV}}}"},
                    "models": {MODEL: {"name": "Kimi K2 Thinking", "reasoning": True, "tool_call": True}},
                }
            },
        }
        return ".config/opencode/opencode.json", pretty_json(settings) + "\n"

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        binary = install_dir / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
        return [str(binary), "run", "--model", f"kimiwire/{MODEL}", "--auto", task]
