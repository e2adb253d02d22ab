"""The request repair's fast paths give the bytes and records of the straightforward passes.

Each `reference_*` below is the plain version of a pass as it was before its fast path (kept here as
the oracle); hypothesis draws conversations with duplicate, mangled, missing and non-string ids,
out-of-place and missing results, empty assistant messages and empty text parts.
"""

import copy
import re
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kimiwire.wire.codecs import json_codec
from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request import repair as repair_module
from kimiwire.wire.request.history import moonshot_hygiene
from kimiwire.wire.request.moonshot_rules import INTERRUPTED_RESULT, tool_results_in_place
from kimiwire.wire.request.reasoning import (
    MOONSHOT_REASONING_PLACEHOLDER,
    _keep_under,
    apply_reasoning_policy,
    current_loop_start,
)
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.request.tool_ids import (
    _NO_CALLS,
    UnrepairableShape,
    _Block,
    _resolve,
    canonicalize_tool_ids,
    history_tool_calls,
    tool_call_name,
)
from kimiwire.wire.servers.policy import Flavor, Policy

NAMES = ["read", "exec", "a-b", ""]
ids = st.one_of(
    st.builds(lambda n, k: f"functions.{n}:{k}", st.sampled_from(NAMES), st.integers(0, 6)),
    st.builds(lambda n, k: f"functions{n}{k}", st.sampled_from(NAMES), st.integers(0, 6)),
    st.sampled_from(["call_1", "call_1", "x" * 40, "x" * 36, "functions.read:0"]),
    st.integers(0, 3),
    st.none(),
)
contents = st.one_of(
    st.none(),
    st.sampled_from(["", "  ", "text"]),
    st.lists(st.sampled_from([{"type": "text", "text": ""}, {"type": "text", "text": "t"}, {"type": "image"}])),
)


@st.composite
def histories(draw: Any) -> list[Any]:
    messages: list[Any] = [{"role": draw(st.sampled_from(["system", "developer"])), "content": "s"}]
    calls: list[Any] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["user", "calls", "tool", "assistant", "odd"]))
        if kind == "user":
            messages.append({"role": "user", "content": draw(contents)})
        elif kind == "calls":
            calls = [
                {"id": draw(ids), "type": "function", "function": {"name": draw(st.sampled_from(NAMES))}}
                for _ in range(draw(st.integers(0, 3)))
            ]
            message: dict[str, Any] = {"role": "assistant", "content": draw(contents), "tool_calls": calls}
            if draw(st.booleans()):
                message["reasoning_content"] = draw(st.sampled_from(["", "r"]))
            messages.append(message)
        elif kind == "tool":
            for call in draw(st.permutations(calls)) if draw(st.booleans()) else calls:
                answer = call["id"] if draw(st.integers(0, 3)) else draw(ids)
                messages.append({"role": "tool", "tool_call_id": answer, "content": "c"})
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(contents)})
        else:
            messages.append(draw(st.sampled_from([None, "text", {"role": "tool"}, {"content": "x"}])))
    return messages


def reference_canonicalize_tool_ids(messages: list[Any], log: RepairLog) -> None:
    k = 0
    block: _Block | None = None
    position = 0
    for index, message in enumerate(messages):
        if type(message) is not dict:
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is not list or not calls:
                block = None
                continue
            block, position = _Block(), 0
            for call in calls:
                if type(call) is not dict:
                    raise UnrepairableShape(f"tool call that is not an object in message {index}")
                new_id = f"functions.{tool_call_name(call, index)}:{k}"
                k += 1
                old_id = call.get("id")
                if old_id != new_id:
                    call["id"] = new_id
                    log.add("ids.call", index, old_id, new_id)
                block.old_ids.append(old_id)
                block.new_ids.append(new_id)
                block.answered.append(False)
        elif role == "tool":
            answer_id = message.get("tool_call_id")
            current = block or _NO_CALLS
            found, how = _resolve(current, answer_id, position)
            position += 1
            if found is None:
                log.add("ids.orphan", index, answer_id, answer_id)
                continue
            current.answered[found] = True
            new_id = current.new_ids[found]
            if answer_id != new_id:
                message["tool_call_id"] = new_id
                log.add("ids.result_by_position" if how == "position" else "ids.result", index, answer_id, new_id)


def reference_tool_results_in_place(messages: list[Any], log: RepairLog) -> list[Any]:
    out: list[Any] = []
    index, changed = 0, False
    while index < len(messages):
        message = messages[index]
        out.append(message)
        index += 1
        calls = message.get("tool_calls") if isinstance(message, dict) and message.get("role") == "assistant" else None
        if not isinstance(calls, list) or not calls or index >= len(messages):
            continue
        results: list[Any] = []
        moved: list[Any] = []
        out_of_place = False
        while index < len(messages):
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


def outcome(fn: Any, messages: list[Any]) -> tuple[bytes, list[Any], str | None]:
    """What a pass leaves: the messages' bytes (or the list it returned), its records, its refusal."""
    log = RepairLog()
    try:
        returned = fn(messages, log)
    except UnrepairableShape as exc:
        return b"", [], str(exc)
    return orjson.dumps(returned if returned is not None else messages), log.as_list(), None


@settings(max_examples=400, deadline=None)
@given(histories())
def test_canonical_ids_equal_the_reference(messages: list[Any]) -> None:
    fast = outcome(canonicalize_tool_ids, copy.deepcopy(messages))
    assert fast == outcome(reference_canonicalize_tool_ids, copy.deepcopy(messages))


def test_a_repeated_id_answered_twice_binds_the_second_call_as_the_reference_does() -> None:
    messages = [
        {"role": "assistant", "tool_calls": [{"id": "same", "function": {"name": "read"}}] * 2},
        {"role": "tool", "tool_call_id": "same"},
        {"role": "tool", "tool_call_id": "same"},
    ]
    fast = outcome(canonicalize_tool_ids, copy.deepcopy(messages))
    assert fast == outcome(reference_canonicalize_tool_ids, copy.deepcopy(messages))
    assert [entry["after"] for entry in fast[1]][-2:] == ["functions.read:0", "functions.read:1"]


@settings(max_examples=400, deadline=None)
@given(histories())
def test_results_in_place_equal_the_reference(messages: list[Any]) -> None:
    fast = outcome(tool_results_in_place, copy.deepcopy(messages))
    assert fast == outcome(reference_tool_results_in_place, copy.deepcopy(messages))


@settings(max_examples=300, deadline=None)
@given(histories(), st.sampled_from(["loop", "strip", "keep"]))
def test_moonshot_records_point_at_the_clients_messages(messages: list[Any], reasoning: str) -> None:
    """The hygiene's index map is built only when it drops a message; the records of the later
    passes still name the client's own messages, dropped ones or not."""
    body = {"model": "kimi-k2.5", "messages": messages, "stream": True}
    result = repair_request_body(orjson.dumps(body), Policy.build(Flavor.MOONSHOT, reasoning=reasoning))
    for entry in result.log.entries:
        if entry.kind == "ids.call":
            assert messages[entry.message_index]["role"] == "assistant"
            assert messages[entry.message_index]["tool_calls"]
        elif entry.kind.startswith(("ids.result", "ids.orphan")):
            assert messages[entry.message_index]["role"] == "tool"
        elif entry.kind.startswith("reasoning."):
            assert messages[entry.message_index]["role"] == "assistant"


def test_the_index_map_after_a_drop() -> None:
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": ""}, {"role": "tool"}]
    kept = moonshot_hygiene(list(messages), RepairLog())
    assert repair_module._origin_indexes(messages, kept) == [0, 2]


def reference_history_tool_calls(messages: list[Any]) -> tuple[int, list[str]]:
    count, highest, names = 0, -1, {}
    for message in messages:
        if type(message) is not dict:
            continue
        found: list[Any] = []
        if message.get("role") == "assistant" and type(message.get("tool_calls")) is list:
            count += len(message["tool_calls"])
            for call in message["tool_calls"]:
                if type(call) is dict:
                    found.append(call.get("id"))
                    function = call.get("function")
                    name = function.get("name") if type(function) is dict else None
                    if type(name) is str and name:
                        names[name] = None
        elif message.get("role") == "tool":
            found.append(message.get("tool_call_id"))
        for call_id in found:
            if type(call_id) is str and ":" in call_id:
                for index in re.findall(r":(\d{1,7})", call_id):
                    highest = max(highest, int(index))
    return max(count, highest + 1), list(names)


id_texts = st.one_of(
    st.builds(lambda n, k: f"functions.{n}:{k}", st.sampled_from(NAMES), st.integers(0, 10**9)),
    st.text(st.sampled_from(list(":0123456789a\n٣²")), max_size=14),
    st.sampled_from(["functions.read:9:1", "read:12345678", "functions.read:٣", "x:", ":1\n", "\n2"]),
    st.integers(),
    st.none(),
)


@st.composite
def id_histories(draw: Any) -> list[Any]:
    messages: list[Any] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            calls = [{"id": draw(id_texts), "function": {"name": "read"}} for _ in range(draw(st.integers(0, 3)))]
            messages.append({"role": "assistant", "tool_calls": calls})
        else:
            messages.append({"role": "tool", "tool_call_id": draw(id_texts)})
    return messages


@settings(max_examples=600, deadline=None)
@given(id_histories())
@example([{"role": "tool", "tool_call_id": "functions.read:9:1"}])
@example([{"role": "tool", "tool_call_id": "read:1"}, {"role": "tool", "tool_call_id": "2"}])
@example([{"role": "tool", "tool_call_id": "read:"}, {"role": "tool", "tool_call_id": "2"}])
def test_history_tool_calls_equal_the_per_id_reading(messages: list[Any]) -> None:
    assert history_tool_calls(messages) == reference_history_tool_calls(messages)


def reference_may_hold_a_lost_integer(value: Any) -> bool:
    kind = type(value)
    if kind is not dict and kind is not list:
        return kind is float and abs(value) >= float(2**63)
    stack = [value]
    while stack:
        node = stack.pop()
        for item in node.values() if type(node) is dict else node:
            if type(item) is dict or type(item) is list:
                stack.append(item)
            elif type(item) is float and abs(item) >= float(2**63):
                return True
    return False


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float(2**63), -float(2**63), float(2**63) - 1024.0, 1e19, 0.7]),
    st.text(max_size=5),
)
json_documents = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(json_documents)
def test_the_level_walk_finds_the_floats_the_item_walk_finds(document: Any) -> None:
    assert json_codec._may_hold_a_lost_integer(document) == reference_may_hold_a_lost_integer(document)


@settings(max_examples=200, deadline=None)
@given(json_documents)
def test_decoding_reads_big_numbers_exactly(document: Any) -> None:
    raw = json_codec.encode_exact(document)
    decoded = json_codec.decode(raw)
    assert json_codec.encode_exact(decoded.value) == raw
    try:
        fast_reading = orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN, Infinity, a lone surrogate: the exact decoder reads it
        assert decoded.fallback is not None
        return
    assert (decoded.fallback is not None) == reference_may_hold_a_lost_integer(fast_reading)


def reference_moonshot_hygiene(messages: list[Any], log: RepairLog) -> list[Any]:
    def empty_part(part: Any) -> bool:
        return isinstance(part, dict) and part.get("type") == "text" and not (part.get("text") or "").strip()

    def empty(content: Any) -> bool:
        if content is None:
            return True
        if isinstance(content, str):
            return not content.strip()
        if isinstance(content, list):
            return all(empty_part(p) for p in content)
        return False

    kept: list[Any] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            kept.append(message)
            continue
        content = message.get("content")
        if message.get("role") == "assistant" and not message.get("tool_calls") and empty(content):
            log.add("message.dropped_empty", index, message, None)
            continue
        if isinstance(content, list) and any(empty_part(p) for p in content):
            parts = [p for p in content if not empty_part(p)]
            message["content"] = parts if parts else ""
            log.add("content.empty_part_removed", index, content, message["content"])
        kept.append(message)
    return kept


hygiene_texts = st.sampled_from(["", " ", "\n x", "\u3000", "x ", "text"])


@settings(max_examples=400, deadline=None)
@given(
    histories(),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["assistant", "user", "tool"]), "content": st.one_of(hygiene_texts, contents)}
        ),
        max_size=4,
    ),
)
def test_moonshot_hygiene_equals_the_reference(messages: list[Any], more: list[Any]) -> None:
    messages = messages + more
    fast = outcome(moonshot_hygiene, copy.deepcopy(messages))
    assert fast == outcome(reference_moonshot_hygiene, copy.deepcopy(messages))


def reference_apply_reasoning_policy(
    messages: list[Any], mode: str, log: RepairLog, placeholder_for_tool_calls: bool, key: str
) -> None:
    if mode == "keep" and key == REASONING_KEYS[0] and not placeholder_for_tool_calls:
        return
    loop_start = current_loop_start(messages) if mode == "loop" else 0 if mode == "keep" else len(messages)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        if index < loop_start and not (placeholder_for_tool_calls and message.get("tool_calls")):
            for other in REASONING_KEYS:
                if other in message:
                    log.add("reasoning.stripped", index, {other: message.pop(other)}, None)
            continue
        _keep_under(key, message, index, log)
        if placeholder_for_tool_calls and message.get("tool_calls"):
            value = message.get(key)
            if not isinstance(value, str) or not value:
                message[key] = MOONSHOT_REASONING_PLACEHOLDER
                log.add("reasoning.placeholder", index, value, MOONSHOT_REASONING_PLACEHOLDER)


reasoning_values = st.sampled_from(["", "r", None, 3])


@st.composite
def reasoning_histories(draw: Any) -> list[Any]:
    messages = draw(histories())
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "assistant":
            for key in ("reasoning_content", "reasoning", "reasoning_text"):
                if draw(st.integers(0, 2)) == 0:
                    message[key] = draw(reasoning_values)
    return messages


@settings(max_examples=400, deadline=None)
@given(
    reasoning_histories(),
    st.sampled_from(["strip", "loop", "keep"]),
    st.booleans(),
    st.sampled_from(["reasoning_content", "reasoning"]),
)
def test_reasoning_policy_equals_the_reference(messages: list[Any], mode: Any, placeholder: bool, key: str) -> None:
    def fast(m: list[Any], log: RepairLog) -> None:
        apply_reasoning_policy(m, mode, log, placeholder_for_tool_calls=placeholder, key=key)

    def plain(m: list[Any], log: RepairLog) -> None:
        reference_apply_reasoning_policy(m, mode, log, placeholder, key)

    assert outcome(fast, copy.deepcopy(messages)) == outcome(plain, copy.deepcopy(messages))
