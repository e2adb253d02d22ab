"""Real clients for the demos and the end-to-end tests: pi-ai (from npm, installed with `npm ci` from the
committed lockfiles into .cache/) and the OpenAI Python SDK, running one multi-turn tool task."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import threading
from typing import Any

import openai

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "tests" / "clients"
CACHE = ROOT / ".cache" / "clients"
# @mariozechner/pi-ai (OpenClaw 2026.4.21 and 2026.5.7) and its continuation @earendil-works/pi-ai
PIAI_VERSIONS = ("0.67.68", "0.73.0", "1.6.0")

TASK = "read /w/a.txt then read /w/b.txt and run `ls -la /w` then read /w/c.txt"
EXPECTED_TOOL_RUNS = [
    ("read", {"path": "/w/a.txt"}),
    ("read", {"path": "/w/b.txt"}),
    ("exec", {"command": "ls -la /w"}),
    ("read", {"path": "/w/c.txt"}),
]
EXPECTED_ANSWER = "Done. alpha | bravo | ran ls -la /w | charlie"
FILES = {"/w/a.txt": "alpha", "/w/b.txt": "bravo", "/w/c.txt": "charlie"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "exec",
            "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    },
]
_install_lock = threading.Lock()


def npm_install(source: pathlib.Path, target: pathlib.Path, timeout: int = 300) -> pathlib.Path:
    """The npm project in `source` installed into `target` (`npm ci` when `source` has a lockfile,
    else `npm install`), once: again only when its manifest or lockfile changes."""
    files = [f for f in ("package.json", "package-lock.json") if (source / f).exists()]
    fingerprint = b"\0".join((source / f).read_bytes() for f in files)
    stamp = target / ".installed"
    with _install_lock:
        if stamp.exists() and stamp.read_bytes() == fingerprint:
            return target
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed here (Node.js and npm are on every machine of this project)")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in files:
            shutil.copy(source / name, target)
        command = "ci" if "package-lock.json" in files else "install"
        done = subprocess.run(
            [npm, command, "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm {command} failed for {source.name}:\n{done.stdout}\n{done.stderr}")
        stamp.write_bytes(fingerprint)
    return target


def piai_dir(version: str) -> pathlib.Path:
    """pi-ai `version`, installed with `npm ci` from the committed lockfile into .cache/."""
    target = npm_install(CLIENTS / f"piai-{version}", CACHE / f"piai-{version}")
    shutil.copy(CLIENTS / "piai_driver.mjs", target / "piai_driver.mjs")
    return target


def run_piai(
    version: str,
    base_url: str,
    sim: str = "",
    sanitize: str = "none",
    task: str = TASK,
    turn_timeout_ms: int = 20000,
    model: str = "kimi-k2-thinking",
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed for the pi-ai tests")
    done = subprocess.run(
        [
            node,
            "piai_driver.mjs",
            "--base-url",
            f"{base_url}/v1",
            "--task",
            task,
            "--sim",
            sim or "shape=sglang",
            "--sanitize",
            sanitize,
            "--turn-timeout-ms",
            str(turn_timeout_ms),
            "--model",
            model,
        ],
        cwd=piai_dir(version),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"pi-ai driver failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def tool_runs(report: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(run["name"], run["arguments"]) for run in report["toolRuns"]]


def _run_tool(name: str, arguments: Any) -> str:
    if name == "read":
        return FILES.get(arguments.get("path"), f"ENOENT: {arguments.get('path')}")
    if name == "exec":
        return f"ran {arguments.get('command')}"
    return f"unknown tool {name}"


def run_openai_sdk(base_url: str, sim: str = "", turns: int = 6) -> dict[str, Any]:
    """The same task with the OpenAI Python SDK's own stream accumulation (`chat.completions.stream`)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    report: dict[str, Any] = {"toolRuns": [], "turns": [], "finalText": None, "outcome": "unfinished"}
    with openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key="sk-test",
        max_retries=0,
        timeout=20,
        default_headers={"x-kimi-sim": sim or "shape=sglang"},
    ) as client:
        for _ in range(turns):
            try:
                with client.chat.completions.stream(model="kimi-k2-thinking", messages=messages, tools=TOOLS) as s:
                    completion = s.get_final_completion()
            except openai.APIError as exc:
                report["outcome"] = f"error: {exc}"
                return report
            choice = completion.choices[0]
            calls = choice.message.tool_calls or []
            report["turns"].append({"finish_reason": choice.finish_reason, "ids": [c.id for c in calls]})
            if not calls:
                report["finalText"] = choice.message.content
                report["outcome"] = "answered" if choice.finish_reason == "stop" else f"stopped: {choice.finish_reason}"
                return report
            messages.append(
                {
                    "role": "assistant",
                    "content": choice.message.content,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": c.function.arguments},
                        }
                        for c in calls
                    ],
                }
            )
            for call in calls:
                try:
                    arguments = json.loads(call.function.arguments)
                except ValueError:
                    arguments = call.function.arguments
                report["toolRuns"].append({"name": call.function.name, "arguments": arguments})
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call.id,
                        "content": _run_tool(call.function.name, arguments if isinstance(arguments, dict) else {}),
                    }
                )
    return report
