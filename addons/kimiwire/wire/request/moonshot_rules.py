"""Request rewrites that make a request acceptable to Moonshot's API, read from its contract table
(`moonshot_contract.py`). Each keeps what the client asked for as far as Moonshot can take it,
and records what it changed (`compat.*`).
"""

from __future__ import annotations

from typing import Any

from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.moonshot_contract import (
    EFFORT_NEAREST,
    TOOL_NAME,
    TOOL_NAME_MAX,
    ModelContract,
    ThinkingForm,
    contract_for,
)
from kimiwire.wire.request.schema_memo import SCHEMA_MEMO
from kimiwire.wire.request.thinking_fields import thinking_enabled, thinking_requested
from kimiwire.wire.servers.models import sampling_is_fixed

FIXED_SAMPLING_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
INTERRUPTED_RESULT = "[interrupted: this tool call has no recorded result]"


def moonshot_thinking_on(body: dict[str, Any]) -> bool:
    """Whether Moonshot will think on this request (and so wants reasoning on every tool-call turn)."""
    contract = contract_for(body.get("model"))
    return contract.thinking_on(body) if contract is not None else thinking_requested(body)


def thinking_and_effort(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    """`thinking` in its object form, never beside `reasoning_effort`, as the family takes it."""
    contract = contract_for(body.get("model"))
    if "thinking" in body and not isinstance(body["thinking"], dict):
        before = body["thinking"]
        enabled = thinking_enabled(before)
        if enabled is None:
            body.pop("thinking")
            log.add("compat.thinking", None, {"thinking": before}, None)
        else:
            body["thinking"] = {"type": "enabled" if enabled else "disabled"}
            log.add("compat.thinking", None, {"thinking": before}, {"thinking": body["thinking"]})
    form = contract.thinking if contract is not None else None
    if form is ThinkingForm.EFFORT and contract is not None:
        _effort_family(body, log, kind, contract)
    elif form is ThinkingForm.ALWAYS_ON:
        if "reasoning_effort" in body:
            log.add(kind, None, {"reasoning_effort": body.pop("reasoning_effort")}, None)
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") != "enabled":
            # This family always thinks and refuses any other value: the field goes, thinking stays on.
            log.add("compat.thinking_cannot_be_disabled", None, {"thinking": body.pop("thinking")}, None)
    elif "reasoning_effort" in body:
        value = body.pop("reasoning_effort")
        after = None
        if value == "none" and "thinking" not in body:  # the client's intent, in Moonshot's field
            body["thinking"] = after = {"type": "disabled"}
        log.add(kind, None, {"reasoning_effort": value}, after and {"thinking": after})


def _effort_family(body: dict[str, Any], log: RepairLog, kind: str, contract: ModelContract) -> None:
    if "thinking" in body:  # ignored by this family, and refused beside `reasoning_effort`
        log.add("compat.thinking", None, {"thinking": body.pop("thinking")}, None)
    value = body.get("reasoning_effort")
    if not isinstance(value, str) or value in contract.efforts:
        return
    nearest = EFFORT_NEAREST.get(value.lower())
    if nearest is not None and nearest in contract.efforts:
        body["reasoning_effort"] = nearest
        log.add(kind, None, {"reasoning_effort": value}, {"reasoning_effort": nearest})


def fixed_sampling(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    """Dropped rather than pinned: the pinned temperature depends on the thinking mode (1 on, 0.6
    off), which Moonshot knows better than a proxy; its default is the pinned value."""
    contract = contract_for(body.get("model"))
    if contract is not None and contract.temperature is not None:
        fields = ("temperature", *(field for field, _ in contract.pinned))
    elif sampling_is_fixed(body.get("model")):
        fields = FIXED_SAMPLING_FIELDS
    else:
        return
    dropped = {field: body.pop(field) for field in fields if field in body}
    if dropped:
        log.add(kind, None, dropped, None)


def forced_tool_choice(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    """A forced `tool_choice` the family refuses while thinking: thinking off where it can be turned
    off (the client's tool choice wins), else `auto` (the retry gate checks the forced tool came)."""
    choice = body.get("tool_choice")
    forced = choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function")
    contract = contract_for(body.get("model"))
    if not forced or contract is None or not contract.thinking_on(body) or contract.forced_choice_taken(choice):
        return
    if contract.thinking is ThinkingForm.SWITCH:
        before = body.get("thinking")
        body["thinking"] = {"type": "disabled"}
        log.add(kind, None, {"tool_choice": choice, "thinking": before}, {"thinking": body["thinking"]})
    else:
        body["tool_choice"] = "auto"
        log.add(kind, None, {"tool_choice": choice}, {"tool_choice": "auto"})


def forced_tool_relaxed(log: RepairLog) -> str | None:
    """The tool the client forced when `forced_tool_choice` sent `auto` instead: "*" for
    `required`, else the function's name (the client's own name)."""
    for entry in log.entries:
        if entry.kind == "compat.forced_tool_choice" and entry.after == {"tool_choice": "auto"}:
            choice = entry.before["tool_choice"]
            if choice == "required":
                return "*"
            function = choice.get("function") if isinstance(choice, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            return name if isinstance(name, str) else "*"
    return None


def tool_schemas(body: dict[str, Any], log: RepairLog, kind: str) -> None:
    """Tool parameter schemas (and a response_format schema) Moonshot's validator refuses,
    rewritten with the same meaning (mfjs_rewrite.py; each schema's answer remembered: schema_memo.py);
    the client's own schema stays the one its answers are checked against."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or "parameters" not in function:
            continue
        rewritten = SCHEMA_MEMO.rewrite(function["parameters"])
        if rewritten is not None:
            function["parameters"], changes = rewritten
            log.add(kind, None, {"tool": function.get("name")}, {"changes": changes})
    response_format = body.get("response_format")
    json_schema = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if isinstance(json_schema, dict) and "schema" in json_schema:
        rewritten = SCHEMA_MEMO.rewrite(json_schema["schema"])
        if rewritten is not None:
            json_schema["schema"], changes = rewritten
            log.add(kind, None, {"response_format": json_schema.get("name")}, {"changes": changes})


def acceptable_tool_name(name: str, taken: set[str]) -> str:
    """A name Moonshot takes for `name`, unlike every name in `taken`."""
    base = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in name)
    if not base or not (base[0].isascii() and base[0].isalpha()):
        base = "t_" + base
    base = base[:TOOL_NAME_MAX]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        suffix = f"_{n}"
        candidate = base[: TOOL_NAME_MAX - len(suffix)] + suffix
    return candidate


def tool_name_renames(body: dict[str, Any]) -> dict[str, str]:
    """client name -> upstream name, for every tool name Moonshot refuses (declared or called in
    the history); the new names collide with no name of the request."""
    names: dict[str, None] = {}
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names[function["name"]] = None
    for message in body.get("messages") or ():
        for call in (message.get("tool_calls") or ()) if isinstance(message, dict) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names[function["name"]] = None
    taken = set(names)
    renames: dict[str, str] = {}
    for name in names:
        if TOOL_NAME.match(name) and len(name) <= TOOL_NAME_MAX:
            continue
        renames[name] = new = acceptable_tool_name(name, taken)
        taken.add(new)
    return renames


def rename_tools(body: dict[str, Any], renames: dict[str, str], log: RepairLog, kind: str) -> None:
    """Applies `renames` in `tools`, `tool_choice`, the history's calls and its tool messages' names."""

    def rename(function: Any) -> None:
        if isinstance(function, dict) and function.get("name") in renames:
            function["name"] = renames[function["name"]]

    for tool in body.get("tools") or ():
        rename(tool.get("function") if isinstance(tool, dict) else None)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        rename(choice.get("function"))
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or ():
            rename(call.get("function") if isinstance(call, dict) else None)
        if message.get("role") == "tool" and message.get("name") in renames:
            message["name"] = renames[message["name"]]
    for old, new in renames.items():
        log.add(kind, None, old, new)


def tool_results_in_place(messages: list[Any], log: RepairLog) -> list[Any]:
    """Each assistant tool-call message directly followed by a result for each call: a user or
    system message inside the block of results moves to just after it (order kept), and a call
    with no result gets a placeholder result saying it was interrupted. Returns the new list
    (the same list when nothing changed)."""
    out: list[Any] = []
    index, changed = 0, False
    while index < len(messages):
        message = messages[index]
        out.append(message)
        index += 1
        calls = message.get("tool_calls") if isinstance(message, dict) and message.get("role") == "assistant" else None
        if not isinstance(calls, list) or not calls or index >= len(messages):
            continue  # (a trailing call-only message is a turn still open: nothing to answer yet)
        results: list[Any] = []
        moved: list[Any] = []
        out_of_place = False
        while index < len(messages):  # the block: every message up to the next assistant message
            follower = messages[index]
            index += 1
            if isinstance(follower, dict) and follower.get("role") == "assistant":
                index -= 1
                break
            if isinstance(follower, dict) and follower.get("role") == "tool":
                results.append(follower)
                out_of_place = out_of_place or bool(moved)
            else:
                moved.append(follower)
        if out_of_place:
            roles = [m.get("role") if isinstance(m, dict) else None for m in moved]
            log.add("compat.tool_results_moved", len(out), roles, None)
            changed = True
        ids = [call.get("id") if isinstance(call, dict) else None for call in calls]
        if ids == [r.get("tool_call_id") for r in results]:  # the usual block: each call answered, in order
            out.extend(results)
            out.extend(moved)
            continue
        answered = {r.get("tool_call_id") for r in results if isinstance(r, dict)}
        for call in calls:
            call_id = call.get("id") if isinstance(call, dict) else None
            if isinstance(call_id, str) and call_id not in answered:
                results.append({"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_RESULT})
                log.add("compat.tool_result_placeholder", len(out) + len(results) - 1, call_id, INTERRUPTED_RESULT)
                changed = True
        out.extend(results)
        out.extend(moved)
    return out if changed else messages
