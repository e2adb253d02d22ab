"""Top-level request fields that only some servers understand: the thinking switches."""

from __future__ import annotations

from typing import Any

from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.servers.openrouter import switch_refused, thinking_as_reasoning
from kimiwire.wire.servers.policy import Flavor


def thinking_enabled(value: Any) -> bool | None:
    """Reads `thinking` in the forms harnesses send: {type: enabled|disabled}, a bool, a string."""
    if isinstance(value, dict):
        value = value.get("type")
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("enabled", "enable", "on", "true", "auto"):
            return True
        if lowered in ("disabled", "disable", "off", "false", "none"):
            return False
    return None


def thinking_requested(body: dict[str, Any]) -> bool:
    """Whether the request leaves thinking on (the default of the Kimi thinking models)."""
    for key in ("thinking", "enable_thinking"):
        if key in body:
            enabled = thinking_enabled(body[key])
            if enabled is not None:
                return enabled
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and isinstance(thinking := kwargs.get("thinking"), bool):
        return thinking
    return body.get("reasoning_effort") != "none"


def translate_thinking_fields(body: dict[str, Any], flavor: Flavor, log: RepairLog) -> None:
    """`thinking` is native to Moonshot only; `enable_thinking` to none of these servers."""
    if flavor is Flavor.MOONSHOT:
        if "enable_thinking" in body:
            value = body.pop("enable_thinking")
            enabled = thinking_enabled(value)
            if "thinking" not in body and enabled is not None:
                body["thinking"] = {"type": "enabled" if enabled else "disabled"}
            log.add("field.enable_thinking", None, value, body.get("thinking"))
        return
    for key in ("thinking", "enable_thinking"):
        if key not in body:
            continue
        value = body.pop(key)
        enabled = thinking_enabled(value)
        after: Any = None
        if flavor.self_hosted and enabled is not None:
            kwargs = body.get("chat_template_kwargs")
            if not isinstance(kwargs, dict):
                kwargs = body["chat_template_kwargs"] = {}
            kwargs.setdefault("thinking", enabled)  # an explicit client value wins
            after = {"chat_template_kwargs": {"thinking": kwargs["thinking"]}}
        elif flavor is Flavor.OPENROUTER and enabled is not None and not switch_refused(body.get("model"), enabled):
            thinking_as_reasoning(body, enabled)  # OpenRouter's own switch
            after = {"reasoning": body["reasoning"]}
        elif flavor is Flavor.DEEPINFRA and enabled is False:
            body["reasoning_effort"] = "none"  # harnesses send an effort level on every request
            after = {"reasoning_effort": body["reasoning_effort"]}
        log.add(f"field.{key}", None, value, after)
