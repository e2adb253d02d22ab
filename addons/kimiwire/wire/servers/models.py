"""What a request's `model` name says about the Kimi model behind it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# K2.5 and K2.6 in the spellings servers and routers use: kimi-k2.5, Kimi-K2.6, kimi-k2-5,
# accounts/fireworks/models/kimi-k2p5. Their templates prefill `<think>`; thinking is a switch.
_K25_K26 = re.compile(r"k2(?:[.\-_ ]?|p)[56](?!\d)", re.I)
# Moonshot pins sampling for K2.5, K2.6, K2.7 and K3 (its model-parameter guide, quoted in
# vercel/ai#19543) and for the Kimi Code model (NousResearch/hermes-agent#11765).
_FIXED_SAMPLING = re.compile(r"k2(?:[.\-_ ]?|p)[567](?!\d)|(?<![a-z0-9])k3(?!\d)|kimi-for-coding", re.I)


_K3 = re.compile(r"(?<![a-z0-9])k3(?!\d)", re.I)


def _name(model: Any) -> str:
    return model if isinstance(model, str) else ""


def thinking_is_a_switch(model: Any) -> bool:
    """K2.5 / K2.6: thinking on by default, `thinking: {type: disabled}` turns it off."""
    return _K25_K26.search(_name(model)) is not None


def sampling_is_fixed(model: Any) -> bool:
    """Moonshot rejects `temperature`, `top_p` and the penalties for these models with HTTP 400."""
    return _FIXED_SAMPLING.search(_name(model)) is not None


def is_k3(model: Any) -> bool:
    """Kimi K3 (kimi-k3, moonshotai/Kimi-K3, ...): its own markup, and answers that may come in
    the reasoning field."""
    return _K3.search(_name(model)) is not None


@dataclass(frozen=True, slots=True)
class IdHandling:
    """Whether kimiwire rewrites tool-call ids for a model family, and why."""

    family: str
    history: bool  # history ids become `functions.NAME:k` (k counts every call in order)
    response: bool  # response calls get `functions.NAME:N`, N never repeating in the conversation
    why: str
    source: str


K2_IDS = IdHandling(
    "K2, K2.5, K2.6, K2.7",
    True,
    True,
    "the chat template pastes ids verbatim into the prompt (`<|tool_call_begin|>ID`, `## Return of ID`); "
    "a model that sees foreign ids copies them and the servers' parsers drop or leak the call",
    "MoonshotAI/Kimi-K2 docs/tool_call_guidance.md; MoonshotAI/K2-Vendor-Verifier README (Rename Tool Call IDs)",
)
K3_IDS = IdHandling(
    "K3",
    True,
    True,
    "the prompt carries no ids (calls are `<|open|>call tool=… index=…`, numbered per message), so a rewrite "
    "cannot mislead the model, while it keeps each tool result paired with its call by `tool_call_id`, which "
    "the servers use to order results; clients key on ids, so response ids must never repeat",
    "vllm-project/vllm vllm/tool_parsers/kimi_k3_tool_parser.py; sgl-project/sglang PR #33343; "
    "openclaw/openclaw PR #51155",
)


def id_handling(model: Any) -> IdHandling:
    """How tool-call ids are handled for requests to `model` (K2-family rules for unknown names)."""
    return K3_IDS if is_k3(model) else K2_IDS
