"""Upstream flavors and the repair policies chosen for them (what the options mean, no IO)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final, Literal, get_args


class Flavor(StrEnum):
    SELFHOSTED = "selfhosted"  # SGLang or vLLM serving the Kimi chat template (either one)
    SGLANG = "sglang"  # self-hosted, known to be SGLang
    VLLM = "vllm"  # self-hosted, known to be vLLM
    MOONSHOT = "moonshot"  # api.moonshot.ai / .cn, platform.kimi.ai
    DEEPINFRA = "deepinfra"
    OPENROUTER = "openrouter"  # openrouter.ai: a gateway; its Kimi models get Moonshot's request rules

    @property
    def self_hosted(self) -> bool:
        return self in (Flavor.SELFHOSTED, Flavor.SGLANG, Flavor.VLLM)

    @property
    def history_reasoning_key(self) -> str:
        """The message key the server reads reasoning from in a request's history. vLLM reads
        only `reasoning` (vllm entrypoints/chat_utils.py `_parse_chat_message_content`, which
        hands it to the template as both keys; vllm#27752, #33402, #38488); SGLang's message
        model declares only `reasoning_content` (sglang entrypoints/openai/protocol.py), as does
        Moonshot. OpenRouter takes `reasoning` (with `reasoning_details`: wire/servers/openrouter.py)."""
        return "reasoning" if self in (Flavor.VLLM, Flavor.OPENROUTER) else "reasoning_content"


# `kimi_flavor auto`: the flavor is found from the upstream host (and its engine, detection.py).
AUTO: Final = "auto"
FlavorOption = Flavor | Literal["auto"]  # a `kimi_flavor` value once parsed (`flavor_option`)
FLAVOR_CHOICES = (AUTO, *(f.value for f in Flavor))

# The values of each policy option (the first is its default), typed so a misspelt comparison
# fails the type check.
ToolIds = Literal["canonical", "keep"]
ReasoningOption = Literal["auto", "strip", "loop", "keep"]
Reasoning = Literal["strip", "loop", "keep"]  # after `auto` is resolved
ToolStream = Literal["whole", "passthrough"]
ReasoningField = Literal["keep", "reasoning_content", "reasoning", "both"]
ThinkingFields = Literal["translate", "keep"]
History = Literal["repair", "keep"]
Markup = Literal["recover", "keep"]
Arguments = Literal["repair", "keep"]
Finish = Literal["fix", "keep"]
RequestCompat = Literal["fix", "off"]
ThinkTags = Literal["split", "keep"]

TOOL_IDS_CHOICES: tuple[ToolIds, ...] = get_args(ToolIds)
REASONING_CHOICES: tuple[ReasoningOption, ...] = get_args(ReasoningOption)
TOOL_STREAM_CHOICES: tuple[ToolStream, ...] = get_args(ToolStream)
REASONING_FIELD_CHOICES: tuple[ReasoningField, ...] = get_args(ReasoningField)
THINKING_FIELDS_CHOICES: tuple[ThinkingFields, ...] = get_args(ThinkingFields)
HISTORY_CHOICES: tuple[History, ...] = get_args(History)
MARKUP_CHOICES: tuple[Markup, ...] = get_args(Markup)
ARGUMENTS_CHOICES: tuple[Arguments, ...] = get_args(Arguments)
FINISH_CHOICES: tuple[Finish, ...] = get_args(Finish)
REQUEST_COMPAT_CHOICES: tuple[RequestCompat, ...] = get_args(RequestCompat)
THINK_TAGS_CHOICES: tuple[ThinkTags, ...] = get_args(ThinkTags)

# Each choice option is `kimi_<field>` on the addon and `--<field>` for scripts/replay; the first
# choice is the default.
POLICY_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "tool_ids": (TOOL_IDS_CHOICES, "canonical: rewrite history tool-call ids to functions.NAME:K; keep: leave them."),
    "reasoning": (
        REASONING_CHOICES,
        "Historical reasoning: strip, loop (keep only the current tool loop), keep; "
        "auto: strip for selfhosted, loop for moonshot, deepinfra and openrouter.",
    ),
    "thinking_fields": (
        THINKING_FIELDS_CHOICES,
        "translate: thinking / enable_thinking become what the flavor understands "
        "(chat_template_kwargs.thinking, reasoning_effort none, OpenRouter's reasoning.enabled); "
        "keep: forward them as sent.",
    ),
    "history": (
        HISTORY_CHOICES,
        "repair: historical tool-call arguments made JSON objects, and on moonshot empty assistant messages "
        "and empty text parts removed; keep: leave the history as sent.",
    ),
    "request_compat": (
        REQUEST_COMPAT_CHOICES,
        "fix: request fields the flavor's server rejects are made acceptable (moonshot, per model family: "
        "developer role, max_completion_tokens, store, tools' strict, thinking and reasoning_effort, pinned "
        "sampling, forced tool_choice while thinking, tool schemas, tool names, tool results out of place, "
        "too many tools); off: forward them as sent.",
    ),
    "tool_stream": (
        TOOL_STREAM_CHOICES,
        "whole: send each streamed tool call once, complete; passthrough: forward tool deltas as they come.",
    ),
    "markup": (MARKUP_CHOICES, "recover: raw Kimi tool-call markup in text becomes tool calls; keep: leave it."),
    "arguments": (
        ARGUMENTS_CHOICES,
        "repair: tool-call arguments in responses made JSON objects (empty, double-encoded, duplicated, "
        "json-repair); keep: forward them as sent (still checked against the schema).",
    ),
    "finish": (
        FINISH_CHOICES,
        "fix: finish_reason tool_calls whenever calls were sent, engine end reasons become stop, usage found "
        "in a choice also at the top level; keep: forward them as sent.",
    ),
    "think_tags": (
        THINK_TAGS_CHOICES,
        "split: reasoning that arrives as content with <think>/</think> goes out as reasoning, no tags "
        "left, and with thinking switched off on a selfhosted engine an answer that arrives as reasoning goes "
        "out as content; keep: forward both fields as sent.",
    ),
    "reasoning_field": (
        REASONING_FIELD_CHOICES,
        "Name of the reasoning field in responses: keep, reasoning_content, reasoning, both.",
    ),
}

_MOONSHOT_HOST_SUFFIXES = ("moonshot.ai", "moonshot.cn", "kimi.ai", "kimi.com")
_DEEPINFRA_HOST_SUFFIXES = ("deepinfra.com",)
_OPENROUTER_HOST_SUFFIXES = ("openrouter.ai",)  # https://openrouter.ai/api/v1/chat/completions


def _host_matches(host: str, suffixes: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == s or host.endswith("." + s) for s in suffixes)


def detect_flavor(host: str) -> Flavor:
    if _host_matches(host, _MOONSHOT_HOST_SUFFIXES):
        return Flavor.MOONSHOT
    if _host_matches(host, _DEEPINFRA_HOST_SUFFIXES):
        return Flavor.DEEPINFRA
    if _host_matches(host, _OPENROUTER_HOST_SUFFIXES):
        return Flavor.OPENROUTER
    return Flavor.SELFHOSTED


def flavor_option(value: str) -> FlavorOption:
    """A `kimi_flavor` value: `auto` or a flavor (ValueError for anything else)."""
    return AUTO if value == AUTO else Flavor(value)


def resolve_flavor(option: str, host: str) -> Flavor:
    return detect_flavor(host) if option == AUTO else Flavor(option)


@dataclass(frozen=True, slots=True)
class Policy:
    """The repairs in force for one flow, after `auto` has been resolved. Each field is the value
    of the `kimi_<field>` option."""

    flavor: Flavor = Flavor.SELFHOSTED
    tool_ids: ToolIds = "canonical"
    reasoning: Reasoning = "strip"
    tool_stream: ToolStream = "whole"
    reasoning_field: ReasoningField = "keep"
    stream_buffer_limit: int = 8 * 1024 * 1024
    thinking_fields: ThinkingFields = "translate"  # request: thinking / enable_thinking per flavor
    history: History = "repair"  # request: historical arguments, Moonshot's empty messages and parts
    request_compat: RequestCompat = "fix"  # request: fields the flavor's server rejects (wire/request/compat.py)
    markup: Markup = "recover"  # response: raw Kimi markup in text becomes tool calls
    arguments: Arguments = "repair"  # response: tool-call arguments made JSON objects
    finish: Finish = "fix"  # response: finish_reason corrected, usage found in a choice also at the top
    think_tags: ThinkTags = "split"  # response: reasoning that arrives as content with think tags split out
    # Model ids the upstream lists as K2.5/K2.6 (wire/servers/detection.py, `auto` only): their thinking is
    # a switch and their template prefills <think>, whatever the id says.
    thinking_switch_models: tuple[str, ...] = ()

    @classmethod
    def build(cls, flavor: Flavor, reasoning: ReasoningOption = "auto", **options: Any) -> Policy:
        resolved: Reasoning = ("strip" if flavor.self_hosted else "loop") if reasoning == "auto" else reasoning
        return cls(flavor=flavor, reasoning=resolved, **options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """From `as_dict`; fields a record predates keep their defaults."""
        known = {f.name for f in fields(cls)} - {"flavor"}
        values = {k: v for k, v in data.items() if k in known}
        if "thinking_switch_models" in values:  # a list once stored
            values["thinking_switch_models"] = tuple(values["thinking_switch_models"])
        return cls(flavor=Flavor(str(data["flavor"])), **values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "flavor": self.flavor.value,
            "thinking_switch_models": list(self.thinking_switch_models),
        }


class PolicyCache:
    """The policy of each flow, built once per upstream host for one set of option values (the
    flavor `auto` depends on the host), and its `as_dict` built once per policy."""

    MAX_HOSTS = 256  # hosts come from requests: the cache stays bounded whatever they are

    def __init__(self, flavor_option: FlavorOption = AUTO, **options: Any) -> None:
        self.flavor_option = flavor_option
        self.options = options
        self._by_host: dict[str, Policy] = {}
        # `auto`: what was found for a host: the flavor of its engine, its K2.5/K2.6 model ids
        self._learned: dict[str, tuple[Flavor, tuple[str, ...]]] = {}
        self._by_flavor: dict[tuple[Flavor, tuple[str, ...]], Policy] = {}
        self._dicts: dict[Policy, dict[str, Any]] = {}

    def policy(self, host: str) -> Policy:
        policy = self._by_host.get(host)
        if policy is None:
            learned = self._learned.get(host) or (resolve_flavor(self.flavor_option, host), ())
            policy = self._by_flavor.get(learned)
            if policy is None:
                flavor, switch_models = learned
                policy = Policy.build(flavor, thinking_switch_models=switch_models, **self.options)
                self._by_flavor[learned] = policy
                self._dicts[policy] = policy.as_dict()
            if len(self._by_host) >= self.MAX_HOSTS:
                self._by_host.clear()
            self._by_host[host] = policy
        return policy

    def learn(self, host: str, flavor: Flavor, switch_models: tuple[str, ...] = ()) -> None:
        """With `auto`, the flows to `host` get `flavor` (the engine behind it was found) and its
        K2.5/K2.6 model ids from now on; an explicit kimi_flavor always wins."""
        learned = (flavor, switch_models)
        if self.flavor_option != AUTO or self._learned.get(host) == learned:
            return
        if len(self._learned) >= self.MAX_HOSTS:
            self._learned.clear()
        if len(self._by_flavor) >= self.MAX_HOSTS:
            self._by_flavor.clear()
            self._dicts.clear()
        self._learned[host] = learned
        self._by_host.pop(host, None)

    def as_dict(self, policy: Policy) -> dict[str, Any]:
        """`policy.as_dict()`, a fresh copy each call (it goes onto a flow's record)."""
        cached = self._dicts.get(policy)
        return policy.as_dict() if cached is None else cached.copy()
