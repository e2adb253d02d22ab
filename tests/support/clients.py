"""The real clients (pi-ai, the OpenAI Python SDK) live in scripts/_clients.py, shared with the
demos; the tests import them from here."""

from scripts._clients import (
    CACHE,
    CLIENTS,
    EXPECTED_ANSWER,
    EXPECTED_TOOL_RUNS,
    FILES,
    PIAI_VERSIONS,
    TASK,
    TOOLS,
    npm_install,
    piai_dir,
    run_openai_sdk,
    run_piai,
    tool_runs,
)

__all__ = [
    "CACHE",
    "CLIENTS",
    "EXPECTED_ANSWER",
    "EXPECTED_TOOL_RUNS",
    "FILES",
    "PIAI_VERSIONS",
    "TASK",
    "TOOLS",
    "npm_install",
    "piai_dir",
    "run_openai_sdk",
    "run_piai",
    "tool_runs",
]
