"""The one pass over the messages that skips Moonshot's message rules where they cannot act
(moonshot_scan.py) gives the bytes, records and facts of running every rule.

The reference is the same repair with the scan answering "every rule may act" (`EVERY_RULE`, which
also leaves the facts to `history_tool_calls`): the rules one by one, as before the scan. Hypothesis
draws agent histories that are mostly well formed (the scan's fast answer) with one or two
perturbations each: results out of order, missing or after a user message, an empty assistant
message or text part, a developer message, a name Moonshot refuses, an id that is not a string.
"""

import copy
from typing import Any
from unittest.mock import patch

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kimiwire.wire.request import repair as repair_module
from kimiwire.wire.request.moonshot_scan import EVERY_RULE, scan_messages
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.request.tool_ids import history_tool_calls
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.unit.wire.test_request_fast_paths import histories

NAMES = ["read", "exec", "a-b", "my tool", "_x", "", "r" * 70, "ok_name"]
TEXTS = ["text", "", " ", "\n x", "x ", "\u3000"]


def turn(draw: Any, k: list[int]) -> list[dict[str, Any]]:
    kind = draw(st.sampled_from(["user", "calls", "calls", "text"]))
    if kind == "user":
        return [{"role": "user", "content": draw(st.sampled_from(["hi", [{"type": "text", "text": "hi"}]]))}]
    if kind == "text":
        return [{"role": "assistant", "content": "done", "reasoning_content": "r"}]
    calls = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["read", "exec"]))
        calls.append(
            {"id": f"functions{name}{k[0]}", "type": "function", "function": {"name": name, "arguments": "{}"}}
        )
        k[0] += 1
    message = {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": calls}
    return [message] + [{"role": "tool", "tool_call_id": c["id"], "content": "c"} for c in calls]


@st.composite
def agent_histories(draw: Any) -> list[Any]:
    k = [0]
    messages: list[Any] = [{"role": "system", "content": "s"}]
    for _ in range(draw(st.integers(1, 6))):
        messages += turn(draw, k)
    for _ in range(draw(st.integers(0, 2))):
        perturb(draw, messages)
    return messages


def first_call(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    call = calls[0] if isinstance(calls, list) and calls else None
    return call if isinstance(call, dict) else {}


def perturb(draw: Any, messages: list[Any]) -> None:
    at = draw(st.integers(0, len(messages) - 1))
    kind = draw(
        st.sampled_from(
            [
                "swap",
                "drop",
                "insert",
                "developer",
                "content",
                "part",
                "name",
                "id",
                "odd",
                "tool_calls",
                "trail",
                "cut",
            ]
        )
    )
    message = messages[at]
    if not isinstance(message, dict):
        return
    if kind == "swap" and at + 1 < len(messages):
        messages[at], messages[at + 1] = messages[at + 1], messages[at]
    elif kind == "drop" and len(messages) > 1:
        del messages[at]
    elif kind == "insert":
        messages.insert(at, draw(st.sampled_from([{"role": "user", "content": "u"}, {"role": "assistant"}])))
    elif kind == "developer":
        message["role"] = "developer"
    elif kind == "content":
        message["content"] = draw(st.one_of(st.sampled_from(TEXTS), st.none(), st.just([]), st.integers(0, 1)))
    elif kind == "part":
        message["content"] = [{"type": "text", "text": draw(st.sampled_from([*TEXTS, None, 5]))}, {"type": "image"}]
    elif kind == "name" and isinstance(first_call(message).get("function"), dict):
        first_call(message)["function"]["name"] = draw(st.sampled_from(NAMES))
    elif kind == "id":
        target, key = (first_call(message), "id") if first_call(message) else (message, "tool_call_id")
        target[key] = draw(st.sampled_from([None, 3, "functions.read:0", "call_9", "x" * 40]))
    elif kind == "odd":
        messages.insert(at, draw(st.sampled_from([None, "text", {"content": "x"}, {"role": "tool"}])))
    elif kind == "tool_calls":
        message["tool_calls"] = draw(st.sampled_from([[], "x", [None], [{"id": "a"}], [{"function": "f"}]]))
    elif kind == "cut":  # the last result of the last turn missing
        del messages[-1]
    elif kind == "trail":
        messages.append({"role": "assistant", "tool_calls": [{"id": "open", "function": {"name": "read"}}]})


POLICIES = [
    Policy.build(Flavor.MOONSHOT),
    Policy.build(Flavor.MOONSHOT, reasoning="strip", tool_ids="keep"),
    Policy.build(Flavor.MOONSHOT, reasoning="keep", history="keep"),
    Policy.build(Flavor.MOONSHOT, request_compat="off"),
    Policy.build(Flavor.OPENROUTER),
]
MODELS = ["kimi-k2-thinking", "kimi-k2.5", "kimi-k3", "moonshotai/kimi-k2"]
TOOLS = [
    [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}],
    [{"type": "function", "function": {"name": "my tool", "parameters": {"type": "object"}}}],
    [{"type": "function", "function": {"name": "functionsread0"}}],
]


def outcome(raw: bytes, policy: Policy) -> tuple[Any, ...]:
    try:
        result = repair_request_body(raw, policy)
    except Exception as exc:  # the rules' own failures on odd shapes: the same one either way
        return (type(exc), str(exc))
    return (result.body, result.log.as_list(), result.facts, result.skipped, result.notes, result.refusal)


def reference(raw: bytes, policy: Policy) -> tuple[Any, ...]:
    with patch.object(repair_module, "scan_messages", lambda messages: EVERY_RULE):
        return outcome(raw, policy)


def check(messages: list[Any], policy: Policy, model: str, tools: list[Any]) -> None:
    raw = orjson.dumps({"model": model, "stream": True, "messages": messages, "tools": tools})
    assert outcome(raw, policy) == reference(raw, policy)


@settings(max_examples=600, deadline=None)
@given(agent_histories(), st.sampled_from(POLICIES), st.sampled_from(MODELS), st.sampled_from(TOOLS))
@example(
    [
        {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "read"}}]},
        {"role": "user", "content": "u"},
        {"role": "tool", "tool_call_id": "a"},
    ],
    POLICIES[0],
    MODELS[0],
    TOOLS[0],
)
@example(  # a result naming another id: with ids kept as sent, its call gets a placeholder
    [
        {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "read"}}]},
        {"role": "tool", "tool_call_id": "b"},
        {"role": "assistant", "content": "done"},
    ],
    POLICIES[1],
    MODELS[0],
    TOOLS[0],
)
@example([{"role": "assistant", "content": []}], POLICIES[0], MODELS[0], TOOLS[0])
@example([{"role": "tool", "content": [{"type": "text", "text": " "}]}], POLICIES[0], MODELS[0], TOOLS[0])
def test_the_scan_gives_what_every_rule_gives(
    messages: list[Any], policy: Policy, model: str, tools: list[Any]
) -> None:
    check(messages, policy, model, tools)


@settings(max_examples=300, deadline=None)
@given(histories(), st.sampled_from(POLICIES), st.sampled_from(MODELS))
def test_the_scan_gives_what_every_rule_gives_on_odd_histories(messages: list[Any], policy: Policy, model: str) -> None:
    check(messages, policy, model, TOOLS[0])


@settings(max_examples=400, deadline=None)
@given(st.one_of(agent_histories(), histories()))
def test_the_scan_reads_the_facts_history_calls(messages: list[Any]) -> None:
    scan = scan_messages(copy.deepcopy(messages))
    assert scan.history is None or scan.history == history_tool_calls(messages)


def test_a_well_formed_agent_history_skips_every_message_rule() -> None:
    """The fast answer the benchmark's history gets: the property tests above hold it to the rules."""
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "go"}]}]
    for k in range(3):
        call = {"id": f"functionsread{k}", "type": "function", "function": {"name": "read", "arguments": "{}"}}
        messages += [
            {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "c"},
            {"role": "assistant", "content": "a", "reasoning_content": "r"},
        ]
    scan = scan_messages(messages)
    assert (scan.developer_role, scan.hygiene, scan.renames, scan.results_out_of_place) == (False,) * 4
    assert scan.history == (3, ["read"])
