"""The name of the reasoning field in responses (`kimi_reasoning_field`).

vLLM >= 0.17 streams `reasoning`, SGLang and Moonshot `reasoning_content`; pi-ai reads either and
replays it under the key it saw, so some setups want one name on the wire.
"""

from __future__ import annotations

from typing import Any

from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.servers.policy import ReasoningField

TEXT_KEYS = ("content", *REASONING_KEYS)


def rename_reasoning(container: dict[str, Any], mode: ReasoningField) -> bool:
    """Rename the reasoning in a delta or message in place; True when it changed."""
    if mode == "keep":
        return False
    current = container.get("reasoning_content")
    alias = container.get("reasoning")
    text = current if isinstance(current, str) and current else alias
    if not isinstance(text, str) or not text:
        return False
    before = (container.get("reasoning_content"), container.get("reasoning"))
    if mode == "reasoning_content":
        container.pop("reasoning", None)
        container["reasoning_content"] = text
    elif mode == "reasoning":
        container.pop("reasoning_content", None)
        container["reasoning"] = text
    else:  # both
        container["reasoning_content"] = text
        container["reasoning"] = text
    return (container.get("reasoning_content"), container.get("reasoning")) != before
