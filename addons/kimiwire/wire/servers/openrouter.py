"""OpenRouter (openrouter.ai) as an upstream: how it carries reasoning and thinking, and which of its
models are Kimi models that get Moonshot's request rules. Sans-IO.

The wire, from OpenRouter's own sources:
- Responses carry reasoning as the string `reasoning` and the array `reasoning_details` of
  `{type: "reasoning.text", text, signature?, format?, index?, id?}`, `{type: "reasoning.summary",
  summary}` or `{type: "reasoning.encrypted", data}`, in a streamed `delta` as in a `message`
  (OpenRouterTeam/ai-sdk-provider src/schemas/reasoning-details.ts and src/chat/schemas.ts;
  openrouter.ai/docs/use-cases/reasoning-tokens). Its own AI SDK provider reads the text of
  `reasoning.text` and `reasoning.summary` entries as the reasoning, encrypted entries as none.
- Requests take reasoning kept on an assistant message as `reasoning` beside the
  `reasoning_details` it came with (ai-sdk-provider src/chat/convert-to-openrouter-chat-messages.ts
  sends both; the docs' "Preserving reasoning blocks" asks for the details back as they came).
- Thinking is switched by the object `reasoning: {enabled, effort, max_tokens, exclude}`
  (openrouter.ai/docs/use-cases/reasoning-tokens), not Moonshot's `thinking`.
- Errors: `{error: {code, message, metadata}}`; a provider's own error is wrapped as a string in
  `error.metadata.raw`, named by `metadata.provider_name` (openrouter.ai/docs/api-reference/errors;
  ai-sdk-provider src/schemas/error-response.ts).
"""

from __future__ import annotations

from typing import Any

from kimiwire.wire.reasoning_keys import REASONING_KEYS as REASONING_TEXT_KEYS
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.moonshot_contract import ThinkingForm, contract_for

DETAILS_KEY = "reasoning_details"
REASONING_KEY = "reasoning"  # the text field OpenRouter sends and takes
TEXT_DETAIL = "reasoning.text"
SUMMARY_DETAIL = "reasoning.summary"
# What OpenRouter's formats call reasoning of no particular provider (ai-sdk-provider
# src/schemas/format.ts ReasoningFormat.Unknown).
UNKNOWN_FORMAT = "unknown"
# OpenRouter's model ids for Moonshot's models: `moonshotai/kimi-k2`, `moonshotai/kimi-k2.6`, ...
KIMI_VENDOR_PREFIX = "moonshotai/"


def is_kimi_model(model: Any) -> bool:
    """A Kimi model behind OpenRouter: Moonshot's vendor prefix, or a name Moonshot's contract knows."""
    if not isinstance(model, str):
        return False
    return model.lower().startswith(KIMI_VENDOR_PREFIX) or contract_for(model) is not None


def details_text(details: Any) -> str | None:
    """The reasoning text of a `reasoning_details` array (its text and summary entries, in order),
    or None when it has none (only encrypted entries, or not an array)."""
    if not isinstance(details, list):
        return None
    parts: list[str] = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        kind = detail.get("type")
        text = detail.get("text") if kind == TEXT_DETAIL else detail.get("summary") if kind == SUMMARY_DETAIL else None
        if isinstance(text, str) and text:
            parts.append(text)
    return "".join(parts) if parts else None


def reasoning_from_details(container: dict[str, Any], text_keys: tuple[str, ...]) -> bool:
    """A delta or message whose reasoning came only in `reasoning_details` gets it as the text
    field too (`reasoning`, as OpenRouter names it), so clients reading the text field and every
    reasoning check see it; the details stay as they came. True when it changed."""
    if DETAILS_KEY not in container or any(isinstance(container.get(k), str) and container.get(k) for k in text_keys):
        return False
    text = details_text(container.get(DETAILS_KEY))
    if text is None:
        return False
    container[REASONING_KEY] = text
    return True


def details_for(text: str) -> list[dict[str, Any]]:
    """Reasoning text as the one `reasoning_details` entry OpenRouter takes back."""
    return [{"type": TEXT_DETAIL, "text": text, "format": UNKNOWN_FORMAT, "index": 0}]


def keep_details(message: dict[str, Any], index: int, log: RepairLog) -> None:
    """A history message keeping reasoning under `reasoning` carries it as `reasoning_details`
    too, unless the client kept the details it got (those go back as they came)."""
    text = message.get(REASONING_KEY)
    if DETAILS_KEY in message or not isinstance(text, str) or not text:
        return
    message[DETAILS_KEY] = details_for(text)
    log.add("reasoning.details_added", index, None, DETAILS_KEY)


def thinking_as_reasoning(body: dict[str, Any], switch: bool) -> None:
    """A thinking switch (read from `thinking` or `enable_thinking`) sent as OpenRouter's
    `reasoning: {enabled}`; what the client set in a `reasoning` object wins."""
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict):
        body["reasoning"] = {"enabled": switch}
    elif not {"enabled", "effort", "max_tokens"} & reasoning.keys():
        reasoning["enabled"] = switch


def reasoning_switched_off(body: dict[str, Any]) -> bool:
    """The request turns thinking off the way OpenRouter reads it: `reasoning: {enabled: false}` or
    an effort of `none` (openrouter.ai/docs/use-cases/reasoning-tokens)."""
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and (reasoning.get("enabled") is False or reasoning.get("effort") == "none"):
        return True
    return body.get("reasoning_effort") == "none"


def history_reasoning_from_details(messages: list[Any], log: RepairLog) -> None:
    """Assistant messages whose kept reasoning is only `reasoning_details` get its text too, so the
    reasoning policy and Moonshot's check (a tool-call turn without reasoning) see it."""
    for index, message in enumerate(messages):
        is_assistant = isinstance(message, dict) and message.get("role") == "assistant"
        if is_assistant and reasoning_from_details(message, REASONING_TEXT_KEYS):
            log.add("reasoning.from_details", index, DETAILS_KEY, REASONING_KEY)


def history_details(messages: list[Any], log: RepairLog, add: bool) -> None:
    """After the reasoning policy: kept reasoning goes back with its details (`keep_details`; only
    when `add`: a Kimi model, whose reasoning carries no provider signature to lose), and the
    details of a message whose reasoning the policy stripped are stripped too."""
    stripped = {entry.message_index for entry in log.entries if entry.kind == "reasoning.stripped"}
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        if any(key in message for key in REASONING_TEXT_KEYS):
            if add:
                keep_details(message, index, log)
        elif index in stripped and DETAILS_KEY in message:
            log.add("reasoning.stripped", index, {DETAILS_KEY: message.pop(DETAILS_KEY)}, None)


def details_only(delta: dict[str, Any]) -> bool:
    """A delta carrying reasoning in `reasoning_details` and in no text field."""
    return DETAILS_KEY in delta and not any(delta.get(key) for key in REASONING_TEXT_KEYS)


def switch_refused(model: Any, enabled: bool) -> bool:
    """Turning thinking off a Kimi model that always thinks: Moonshot refuses it for K2.7-code
    (`only type=enabled is allowed`, vercel/ai moonshotai-k2.7-disabled-thinking-error.json), so the
    switch is not sent through OpenRouter either."""
    contract = contract_for(model) if is_kimi_model(model) else None
    return not enabled and contract is not None and contract.thinking is ThinkingForm.ALWAYS_ON
