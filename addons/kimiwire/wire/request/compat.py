"""Request fields a flavor's server rejects, made acceptable (`kimi_request_compat=fix`).

Harnesses choose a provider's quirks by its base URL; behind kimiwire they see 127.0.0.1 and send
OpenAI's defaults, which Moonshot answers with HTTP 400. Each rule is one row of `RULES`: the
flavors it applies to, the repair kind it records, and where the rejection is documented.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.moonshot_rules import fixed_sampling, forced_tool_choice, thinking_and_effort, tool_schemas
from kimiwire.wire.servers.policy import Flavor


def _developer_role(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    for index, message in enumerate(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "developer":
            message["role"] = "system"
            log.add(kind, index, "developer", "system")


def _max_completion_tokens(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    if "max_completion_tokens" not in body:
        return
    value = body.pop("max_completion_tokens")
    if "max_tokens" not in body:  # both present: the field Moonshot reads wins
        body["max_tokens"] = value
    log.add(kind, None, {"max_completion_tokens": value}, {"max_tokens": body["max_tokens"]})


def _drop(field: str) -> Callable[[dict[str, Any], RepairLog, str], None]:
    def drop(body: dict[str, Any], log: RepairLog, kind: str) -> None:
        if field in body:
            log.add(kind, None, {field: body.pop(field)}, None)

    return drop


def _tool_strict(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and "strict" in function:
            log.add(kind, None, {"name": function.get("name"), "strict": function.pop("strict")}, None)


@dataclass(frozen=True, slots=True)
class RequestRule:
    kind: str  # the repair recorded when it fires
    flavors: frozenset[Flavor]
    fix: Callable[[dict[str, Any], RepairLog, str], None]
    source: str  # where the server's rejection is documented


_MOONSHOT = frozenset({Flavor.MOONSHOT})

RULES: tuple[RequestRule, ...] = (
    RequestRule(
        "compat.developer_role",
        _MOONSHOT,
        _developer_role,
        "400 unsupported role ROLE_UNSPECIFIED: openclaw/openclaw#21060, #24499; earendil-works/pi#8109",
    ),
    RequestRule(
        "compat.max_completion_tokens",
        _MOONSHOT,
        _max_completion_tokens,
        "Gitlawb/openclaude#805 (renames it for Moonshot)",
    ),
    RequestRule("compat.store", _MOONSHOT, _drop("store"), "Gitlawb/openclaude#805 (strips it for Moonshot)"),
    RequestRule(
        "compat.reasoning_effort",
        _MOONSHOT,
        thinking_and_effort,
        "400 cannot specify both 'thinking' and 'reasoning_effort': HKUDS/nanobot#3939; per family "
        "(K2.7-code: thinking only enabled, K3: reasoning_effort low|high|max): moonshot_contract.py",
    ),
    RequestRule("compat.tool_strict", _MOONSHOT, _tool_strict, "earendil-works/pi#8109, openclaw/openclaw#8579"),
    RequestRule(
        "compat.fixed_sampling",
        _MOONSHOT,
        fixed_sampling,
        "400 invalid temperature: only 1 is allowed for this model: NousResearch/hermes-agent#12566, "
        "anomalyco/opencode#10811; UKGovernmentBEIS/inspect_ai#5156 (pinned in both thinking modes)",
    ),
    RequestRule(
        "compat.forced_tool_choice",
        _MOONSHOT,
        forced_tool_choice,
        "400 tool_choice 'specified' is incompatible with thinking enabled: can1357/oh-my-pi#827, #1077; "
        "UKGovernmentBEIS/inspect_ai#5152; which family takes which: moonshot_contract.py",
    ),
    RequestRule(
        "compat.tool_schema",
        _MOONSHOT,
        tool_schemas,
        "400 ... is not a valid moonshot flavored json schema: MoonshotAI/walle (its validator); "
        "vercel/ai packages/moonshotai normalize-json-schema-for-mfjs.ts",
    ),
)


def apply_request_compat(
    body: dict[str, Any], flavor: Flavor, log: RepairLog, without: frozenset[str] = frozenset()
) -> None:
    """Every rule of `flavor` but those named in `without`, in table order (the `reasoning_effort`
    rule before the forced `tool_choice` one, which reads the thinking switch it may set)."""
    for rule in _RULES_BY_FLAVOR[flavor]:
        if rule.kind not in without:
            rule.fix(body, log, rule.kind)


_RULES_BY_FLAVOR = {flavor: tuple(rule for rule in RULES if flavor in rule.flavors) for flavor in Flavor}
