"""The answer in the reasoning field of a turn asked with thinking off (sans-IO).

A K2.5/K2.6 request with thinking off gets a prompt ending in `<think></think>`: the model writes
no reasoning and never `</think>`. Released engines whose Kimi reasoning parser does not look at
the prompt still read the output as reasoning, so the answer (its text, and the tool-call markup
the tool parser never saw) arrives in the reasoning field. With thinking known off, reasoning
deltas are the answer: they go out as content, where the markup scanner recovers calls of known
tools, and the turn is not a reasoning-only one.

Only when thinking is known off for the request (an explicit switch, facts.thinking_off) and the
switch is known to reach the model's chat template: on self-hosted engines (vLLM, SGLang), which
hand `chat_template_kwargs.thinking` to the template. Elsewhere (Moonshot, DeepInfra, gateways)
nothing is moved: a server that ignored the switch would send real reasoning there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.servers.policy import Policy


@dataclass(frozen=True, slots=True)
class EngineBehaviour:
    engine: str
    what: str
    source: str


# The released engines known to put a thinking-off answer in the reasoning field.
ANSWER_IN_REASONING_WHEN_THINKING_OFF = (
    EngineBehaviour(
        "SGLang 0.5.5",
        "every token is reasoning until `</think>`, which a thinking-off output never writes: the whole "
        "answer, tool markup included, comes as reasoning_content",
        'sglang==0.5.5 wheel, sglang/srt/parser/reasoning_parser.py: `"kimi_k2": DeepSeekR1Detector`, whose '
        "__init__ passes `force_reasoning=True` whatever the caller asks",
    ),
    EngineBehaviour(
        "vLLM 0.10.2",
        "the first step's text is reasoning, the rest content: the reasoning parser runs on the first "
        "step before the prompt's `</think>` is checked",
        "vllm==0.10.2 wheel, vllm/entrypoints/openai/serving_chat.py `chat_completion_stream_generator`: "
        "`delta_message = reasoning_parser.extract_reasoning_content_streaming(...)` runs before "
        "`reasoning_parser.is_reasoning_end(res.prompt_token_ids)` (the thinking-off check) ends reasoning",
    ),
)


def reasoning_is_answer(facts: RequestFacts, policy: Policy) -> bool:
    """Reasoning deltas of this request's turn are its answer (see the module docstring)."""
    return facts.thinking_off and policy.flavor.self_hosted


def reasoning_as_content(delta: dict[str, Any]) -> str:
    """Takes the reasoning out of `delta` (both names, once when one mirrors the other) and puts it
    before the delta's content (the model wrote it first). Returns the text moved. Content that is
    not text (parts) is left alone, and so is the reasoning then."""
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        return ""
    texts: list[str] = []
    for key in REASONING_KEYS:
        text = delta.get(key)
        if isinstance(text, str):
            del delta[key]
            if text and text not in texts:
                texts.append(text)
    moved = "".join(texts)
    if moved:
        delta["content"] = moved + (content or "")
    return moved
