"""Renders requests through the real Kimi-K2-Thinking chat template: what the model sees."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import jinja2
import jinja2.sandbox

TEMPLATE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "kimi-k2-thinking.jinja"


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(TEMPLATE.read_text()).render(messages=messages, tools=tools, add_generation_prompt=True)


CALL_ID = re.compile(r"<\|tool_call_begin\|>(.*?)<\|tool_call_argument_begin\|>")
RETURN_OF = re.compile(r"## Return of (\S+)")
THINK = re.compile(r"<think>(.*?)</think>", re.S)
ASSISTANT_TURN = re.compile(r"<\|im_assistant\|>.*?<\|im_end\|>", re.S)
TOOL_TURN = re.compile(r"<\|im_system\|>[^<]*<\|im_middle\|>## Return of (\S+)")
