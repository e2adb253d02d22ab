"""Moonshot's request contract, one row per Kimi model family: what its API accepts (plain data).

The rules that make a request acceptable (`moonshot_rules.py`) and the simulator's validator read
this table; each row names its public sources. Error texts are Moonshot's own, as its API sends
them in `{"error": {"message": ..., "type": "invalid_request_error"}}` with HTTP 400.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ThinkingForm(StrEnum):
    NONE = "none"  # no reasoning (K2 instruct)
    SWITCH = "switch"  # `thinking: {type: enabled|disabled}`, on by default
    ALWAYS_ON = "always_on"  # reasons always; `thinking: {type: enabled}` is the only value taken
    EFFORT = "effort"  # reasons always; top-level `reasoning_effort` sets how much; `thinking` ignored


@dataclass(frozen=True, slots=True)
class ModelContract:
    family: str
    pattern: re.Pattern[str]
    thinking: ThinkingForm
    efforts: tuple[str, ...]  # the `reasoning_effort` values taken (EFFORT form)
    # Sampling fields pinned to one value: a different value is refused. The temperature
    # depends on the thinking mode: (with thinking, without).
    temperature: tuple[float, float] | None
    pinned: tuple[tuple[str, float], ...]  # (field, the only value) for top_p, penalties, n
    required_with_thinking: bool  # `tool_choice: "required"` taken while thinking
    named_with_thinking: bool  # a named function `tool_choice` taken while thinking
    max_tools: int | None
    sources: tuple[str, ...]
    # `thinking: {type: disabled}` answered with 400 (documented for K2.7-code only; kimiwire drops
    # the field for every ALWAYS_ON family, which thinks whatever it says).
    refuses_disabling: bool = False

    def thinking_on(self, body: dict[str, Any]) -> bool:
        if self.thinking is ThinkingForm.NONE:
            return False
        if self.thinking is ThinkingForm.SWITCH:
            value = body.get("thinking")
            return not (isinstance(value, dict) and value.get("type") == "disabled")
        return True

    def forced_choice_taken(self, choice: Any) -> bool:
        """Whether this family takes `tool_choice` `choice` while it thinks."""
        if choice == "required":
            return self.required_with_thinking
        if isinstance(choice, dict):
            return self.named_with_thinking
        return True


_PINNED = (("top_p", 0.95), ("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("n", 1.0))
_MODEL_PARAMETERS = (
    "Moonshot's model-parameter guide as quoted in vercel/ai#19543; vercel/ai packages/moonshotai "
    "src/moonshotai-chat-language-model.ts (prepareSamplingOptions), "
    "__fixtures__/moonshotai-unsupported-sampling-error.json"
)

CONTRACTS: tuple[ModelContract, ...] = (
    ModelContract(
        "k2.7-code",
        re.compile(r"k2(?:[.\-_ ]?|p)7(?!\d)", re.I),
        ThinkingForm.ALWAYS_ON,
        (),
        (1.0, 1.0),
        _PINNED,
        required_with_thinking=False,
        named_with_thinking=True,
        max_tools=None,
        sources=(
            "vercel/ai packages/moonshotai __fixtures__/moonshotai-k2.7-disabled-thinking-error.json, "
            "moonshotai-thinking-schema.test.ts (thinking cannot be disabled)",
            "vercel/ai packages/moonshotai src/moonshotai-prepare-tools.ts (required refused; a named tool taken)",
            _MODEL_PARAMETERS,
        ),
        refuses_disabling=True,
    ),
    ModelContract(
        "k2.6",
        re.compile(r"k2(?:[.\-_ ]?|p)6(?!\d)", re.I),
        ThinkingForm.SWITCH,
        (),
        (1.0, 0.6),
        _PINNED,
        required_with_thinking=False,
        named_with_thinking=False,
        max_tools=None,
        sources=(
            "vercel/ai packages/moonshotai __fixtures__/moonshotai-required-tool-choice-error.json",
            "can1357/oh-my-pi#827, #1077; UKGovernmentBEIS/inspect_ai#5152 ('specified' with thinking)",
            _MODEL_PARAMETERS,
        ),
    ),
    ModelContract(
        "k2.5",
        re.compile(r"k2(?:[.\-_ ]?|p)5(?!\d)", re.I),
        ThinkingForm.SWITCH,
        (),
        (1.0, 0.6),
        _PINNED,
        required_with_thinking=False,
        named_with_thinking=False,
        max_tools=None,
        sources=(
            "can1357/oh-my-pi#827, #1077 (forced tool_choice with thinking)",
            "NousResearch/hermes-agent#12566, anomalyco/opencode#10811 (invalid temperature)",
            _MODEL_PARAMETERS,
        ),
    ),
    ModelContract(
        "k3",
        re.compile(r"(?<![a-z0-9])k3(?!\d)", re.I),
        ThinkingForm.EFFORT,
        ("low", "high", "max"),
        (1.0, 1.0),
        _PINNED,
        required_with_thinking=True,
        named_with_thinking=False,
        max_tools=None,
        sources=(
            "vercel/ai packages/moonshotai src/moonshotai-chat-language-model.ts (K3: reasoningEffort "
            "low|high|max, thinking not accepted), __fixtures__/moonshotai-k3-required-tool-choice.json "
            "(required answered), moonshotai-kimi-k3-temperature-rejection.json",
            "new-api relay kimi-k3 texts calibrated on api.moonshot.cn (thinking ignored, reasoning_effort not "
            "enum-checked; temperature/top_p/n/penalties pinned; 'specified' tool_choice refused)",
        ),
    ),
    ModelContract(
        "kimi-for-coding",
        re.compile(r"kimi-for-coding", re.I),
        ThinkingForm.SWITCH,
        (),
        (1.0, 0.6),
        _PINNED,
        required_with_thinking=False,
        named_with_thinking=False,
        max_tools=128,
        sources=(
            "NousResearch/hermes-agent#11765 (pinned sampling)",
            "MoonshotAI/Kimi-K2#90; MoonshotAI/kimi-cli#1773 (at most 128 tools)",
        ),
    ),
    ModelContract(
        "k2-thinking",
        re.compile(r"k2[\w.\-]*thinking", re.I),
        ThinkingForm.ALWAYS_ON,
        (),
        None,
        (),
        required_with_thinking=False,
        named_with_thinking=False,
        max_tools=None,
        sources=(
            "platform.moonshot.ai/docs/guide/use-kimi-k2-thinking-model (reasoning_content kept in tool loops), "
            "as cited in Kilo-Org/kilocode#5544",
            "tool_choice 'specified' with kimi-k2-thinking: a public harness note quoting the 400",
        ),
    ),
    ModelContract(
        "k2",
        re.compile(r"kimi-k2|moonshot-v1|kimi-latest", re.I),
        ThinkingForm.NONE,
        (),
        None,
        (),
        required_with_thinking=True,
        named_with_thinking=True,
        max_tools=None,
        sources=("platform.moonshot.ai/docs/api/tool_use (tool_choice none/auto/required/named)",),
    ),
)


def contract_for(model: Any) -> ModelContract | None:
    """The row whose pattern the model name matches first, or None for a model not in the table."""
    if not isinstance(model, str):
        return None
    if len(model) > _REMEMBERED_NAME_MAX:
        return _first_match(model)
    return _remembered_match(model)


def _first_match(model: str) -> ModelContract | None:
    for contract in CONTRACTS:
        if contract.pattern.search(model):
            return contract
    return None


# A request asks several rules about its model: each name's answer is kept (a few names in practice;
# the bounds keep the store small for any input).
_REMEMBERED_NAME_MAX = 256
_remembered_match = functools.lru_cache(maxsize=256)(_first_match)


# How an OpenAI `reasoning_effort` value maps onto a family's effort values when it lacks it:
# the nearest level, rounding up (a client asking for `medium` gets more, never less, thinking;
# `none` and `minimal` cannot switch an always-thinking model off and get its lowest).
EFFORT_NEAREST = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "max"}

# Tool names the platform takes, as its message says: a letter first, then letters, digits, `_`, `-`
# (new-api relay kimi-k3 validation; QwenPaw#6557; openclaw#79179). A public probe of kimi-k2.7-code
# saw a leading `_` taken; K3's check wants a letter: kimiwire renames such names too (reversibly).
TOOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
TOOL_NAME_MAX = 64  # OpenAI's own limit; Moonshot's is not documented, so the rename keeps within it


class MoonshotError(StrEnum):
    """Moonshot's 400 messages, exactly as its API sends them ({N}/{...} filled in)."""

    REASONING_MISSING = (
        "thinking is enabled but reasoning_content is missing in assistant tool call message at index {index}"
    )
    THINKING_ONLY_ENABLED = "invalid thinking: only type=enabled is allowed for this model"
    THINKING_AND_EFFORT = "cannot specify both 'thinking' and 'reasoning_effort'"
    REQUIRED_WITH_THINKING = "tool_choice 'required' is incompatible with thinking enabled"
    NAMED_WITH_THINKING = "tool_choice 'specified' is incompatible with thinking enabled"
    PINNED = "invalid {field}: only {value} is allowed for this model"
    EMPTY_ASSISTANT = "Invalid request: the message at position {index} with role 'assistant' must not be empty"
    TOOL_NAME = (
        "Invalid request: function name is invalid, must start with a letter and can contain letters, numbers, "
        "underscores, and dashes"
    )
    SCHEMA = (
        "Invalid request: {where} is not a valid moonshot flavored json schema, details: <At path '{path}': {detail}>"
    )
    TOO_MANY_TOOLS = "Invalid request: too many tools: {count} (at most {limit})"
    RESULTS_NOT_FOLLOWING = (
        "an assistant message with 'tool_calls' must be followed by tool messages responding to each "
        "'tool_call_id'. The following tool_call_ids did not have response messages: {ids}"
    )
    DEVELOPER_ROLE = "invalid request: unsupported role ROLE_UNSPECIFIED"


ERROR_SOURCES: dict[MoonshotError, str] = {
    MoonshotError.REASONING_MISSING: "microsoft/vscode#306695; kimi-agent-sdk#169; earendil-works/pi#5633, PR #4178",
    MoonshotError.THINKING_ONLY_ENABLED: "vercel/ai moonshotai-k2.7-disabled-thinking-error.json",
    MoonshotError.THINKING_AND_EFFORT: "HKUDS/nanobot#3939",
    MoonshotError.REQUIRED_WITH_THINKING: "vercel/ai moonshotai-required-tool-choice-error.json",
    MoonshotError.NAMED_WITH_THINKING: "can1357/oh-my-pi#1077; new-api relay kimi-k3 texts",
    MoonshotError.PINNED: "vercel/ai moonshotai-unsupported-sampling-error.json; new-api relay kimi-k3 texts",
    MoonshotError.EMPTY_ASSISTANT: "lobehub/lobe-chat#8419; AstrBotDevs/AstrBot#7200",
    MoonshotError.TOOL_NAME: "vercel-labs eval of kimi-k2.7-code; new-api relay kimi-k3 texts",
    MoonshotError.SCHEMA: "MoonshotAI/walle validator.go, keyword_validators.go, errors.go; public harness reports",
    MoonshotError.TOO_MANY_TOOLS: "MoonshotAI/Kimi-K2#90 (limit; wording not public: this text is kimiwire's)",
    MoonshotError.RESULTS_NOT_FOLLOWING: "charmbracelet/crush#3847; kimi-cli#1977 (wording as relayed with a Kimi id)",
    MoonshotError.DEVELOPER_ROLE: "openclaw/openclaw#21060; earendil-works/pi#8109",
}
