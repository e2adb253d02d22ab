"""The harnesses of the matrix (scripts/e2e-harness), one adapter each."""

from __future__ import annotations

from .base import Harness
from .hermes import Hermes
from .kimi_cli import KimiCli
from .mini_swe_agent import MiniSweAgent
from .openclaw import OpenClaw
from .opencode import OpenCode
from .pi import Pi

HARNESSES: dict[str, Harness] = {h.name: h for h in (OpenClaw(), Pi(), OpenCode(), Hermes(), MiniSweAgent(), KimiCli())}
