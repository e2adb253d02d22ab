"""mini-swe-agent (PyPI `mini-swe-agent`): `mini -y --exit-immediately -t TASK` runs one task without
asking. It talks to the model through litellm (`openai/` prefix: plain chat completions to the base
URL, not streamed) and has one tool, `bash`; a run ends when the model runs
`echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`, and what that command prints after the marker is the
submission (the harness's final answer): the task reads the files, then submits them again."""

from __future__ import annotations

import json
import pathlib

import yaml

from .base import KEY_ENV, MODEL, PipHarness, Run, Workspace

SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


class MiniSweAgent(PipHarness):
    name = "mini-swe-agent"
    title = "mini-swe-agent"
    versions = ("2.4.6",)
    read_tool = "bash"
    package, script = "mini-swe-agent", "mini"
    home_variable, home_folder = "MSWEA_GLOBAL_CONFIG_DIR", "mini"

    def config(self, version: str, base_url: str) -> tuple[str, str]:
        settings = {
            "model": {
                "model_name": f"openai/{MODEL}",
                "model_kwargs": {"api_base": base_url},  # the key: OPENAI_API_KEY, as litellm reads it
                "cost_tracking": "ignore_errors",  # litellm has no price for a custom model
            }
        }
        return "kimiwire.yaml", yaml.safe_dump(settings, sort_keys=False)

    def read_step(self, path: str) -> str:
        return f"call bash {json.dumps({'command': f'cat {path}'})}"

    def task(self, ws: Workspace) -> str:
        a, b, c = ws.paths
        submit = json.dumps({"command": f"{SUBMIT} && cat {a} {b} {c}"})
        return f"{self.read_step(a)} and {self.read_step(b)} then {self.read_step(c)} then call bash {submit}"

    def env(self, version: str, install_dir: pathlib.Path, ws: Workspace) -> dict[str, str]:
        env = super().env(version, install_dir, ws)
        env.update(MSWEA_SILENT_STARTUP="1", MSWEA_CONFIGURED="true")
        env["OPENAI_API_KEY"] = env[KEY_ENV]
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm's own copy: no fetch from the internet
        return env

    def command(self, version: str, install_dir: pathlib.Path, ws: Workspace, task: str) -> list[str]:
        options = ["-y", "--exit-immediately", "-c", "mini.yaml", "-c", str(ws.home / "kimiwire.yaml")]
        return [self.executable(install_dir), *options, "-o", str(ws.home / "run.traj.json"), "-t", task]

    def answer(self, run: Run, ws: Workspace) -> str:
        trajectory = ws.home / "run.traj.json"
        if not trajectory.exists():
            return ""
        info = json.loads(trajectory.read_text()).get("info") or {}
        return str(info.get("submission") or "")
