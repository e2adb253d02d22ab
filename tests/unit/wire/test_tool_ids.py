import copy

import pytest
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.tool_ids import UnrepairableShape, canonicalize_tool_ids, count_history_tool_calls

from tests.support.conversations import assistant, call, tool, user


def run(messages):
    log = RepairLog()
    canonicalize_tool_ids(messages, log)
    return messages, log


def ids(messages):
    """(assistant call ids, tool_call_ids) in order."""
    calls = [c["id"] for m in messages if m.get("tool_calls") for c in m["tool_calls"]]
    answers = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    return calls, answers


def two_turns(first: list[str], second: list[str], answers1=None, answers2=None):
    """Turn 1 calls read per id in `first`, turn 2 calls exec per id in `second`."""
    answers1 = answers1 if answers1 is not None else first
    answers2 = answers2 if answers2 is not None else second
    return [
        user(),
        assistant(*[call(i, "read") for i in first]),
        *[tool(a, f"r{n}") for n, a in enumerate(answers1)],
        assistant(*[call(i, "exec", {"command": "ls"}) for i in second]),
        *[tool(a, f"e{n}") for n, a in enumerate(answers2)],
    ]


EXPECTED_1_1 = (["functions.read:0", "functions.exec:1"], ["functions.read:0", "functions.exec:1"])


@pytest.mark.parametrize(
    "first,second",
    [
        (["functions.read:0"], ["functions.exec:1"]),  # already canonical
        (["functionsread0"], ["functionsexec1"]),  # OpenClaw strict sanitizer
        (["search:0"], ["search:1"]),  # Moonshot's API style (name mismatch is fixed too)
        (["functions read:0"], ["functions exec:0"]),  # space instead of a dot
        (["call_abc123def456"], ["call_0f9e8d7c6b"]),  # OpenAI style
        (["functions.read:0:2"], ["functions.exec:1:3"]),  # OpenClaw occurrence seed
        (["a1b2c3d4e"], ["f5a6b7c8d"]),  # strict9: 9-character hashes
        (["functions.read:0"], ["functions.read:0"]),  # same id reused on every turn
        (["x" * 40], ["y" * 40]),  # ids cut to 40 characters
    ],
)
def test_shapes_one_call_per_turn(first, second):
    messages, log = run(two_turns(first, second))
    assert ids(messages) == EXPECTED_1_1
    changed = sum(1 for a, b in zip(first + second, EXPECTED_1_1[0], strict=True) if a != b)
    assert len([r for r in log.entries if r.kind == "ids.call"]) == changed


def test_already_canonical_is_not_touched():
    messages = two_turns(["functions.read:0"], ["functions.exec:1"])
    before = copy.deepcopy(messages)
    _, log = run(messages)
    assert messages == before
    assert not log


def test_occurrence_suffix_and_hash_suffix_in_one_message():
    # OpenClaw: the 2nd occurrence of functions.read:0 becomes functionsread02; a collision
    # with another sanitized id gets an 8-hex hash suffix.
    messages, _ = run(
        [
            user(),
            assistant(
                call("functionsread0", "read"), call("functionsread02", "read"), call("functionsread1ac7a8d2f", "read")
            ),
            tool("functionsread0", "A"),
            tool("functionsread02", "B"),
            tool("functionsread1ac7a8d2f", "C"),
        ]
    )
    assert ids(messages) == (
        ["functions.read:0", "functions.read:1", "functions.read:2"],
        ["functions.read:0", "functions.read:1", "functions.read:2"],
    )
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["A", "B", "C"]


def test_answers_in_a_different_order_follow_their_ids():
    messages, _ = run(
        [user(), assistant(call("call_a", "read"), call("call_b", "exec")), tool("call_b", "B"), tool("call_a", "A")]
    )
    tools = [m for m in messages if m["role"] == "tool"]
    assert [(t["tool_call_id"], t["content"]) for t in tools] == [("functions.exec:1", "B"), ("functions.read:0", "A")]


def test_duplicated_old_ids_resolve_in_occurrence_order():
    messages, _ = run(
        [user(), assistant(call("dup", "read"), call("dup", "exec")), tool("dup", "1st"), tool("dup", "2nd")]
    )
    tools = [m for m in messages if m["role"] == "tool"]
    assert [(t["tool_call_id"], t["content"]) for t in tools] == [
        ("functions.read:0", "1st"),
        ("functions.exec:1", "2nd"),
    ]


def test_answer_with_mangled_form_of_the_call_id():
    messages, log = run(
        [
            user(),
            assistant(call("functions.read:0", "read"), call("functions.exec:1", "exec")),
            tool("functionsexec1", "E"),
            tool("functionsread0", "R"),
        ]
    )
    tools = [m for m in messages if m["role"] == "tool"]
    assert [(t["tool_call_id"], t["content"]) for t in tools] == [("functions.exec:1", "E"), ("functions.read:0", "R")]
    assert "ids.result_by_position" not in log.kinds()


def test_truncated_answer_matches_the_full_call_id():
    long_id = "call_" + "abcdef0123" * 5  # 55 characters
    messages, _ = run(
        [user(), assistant(call("other", "exec"), call(long_id, "read")), tool(long_id[:40], "R"), tool("other", "E")]
    )
    tools = [m for m in messages if m["role"] == "tool"]
    assert [(t["tool_call_id"], t["content"]) for t in tools] == [("functions.read:1", "R"), ("functions.exec:0", "E")]


def test_unknown_answer_ids_fall_back_to_position():
    messages, log = run([user(), assistant(call("a", "read"), call("b", "exec")), tool("zzz", "1"), tool("yyy", "2")])
    assert ids(messages)[1] == ["functions.read:0", "functions.exec:1"]
    assert log.kinds().count("ids.result_by_position") == 2


def test_orphan_is_left_unchanged_and_recorded():
    messages, log = run([user(), tool("lost", "x"), assistant(call("a", "read")), tool("a", "1"), tool("extra", "2")])
    assert messages[1]["tool_call_id"] == "lost"
    assert messages[4]["tool_call_id"] == "extra"
    orphans = [r for r in log.entries if r.kind == "ids.orphan"]
    assert [(r.message_index, r.before) for r in orphans] == [(1, "lost"), (4, "extra")]


def test_counter_is_global_over_the_conversation():
    messages, _ = run(
        [
            user(),
            assistant(call("x", "read"), call("y", "read")),
            tool("x"),
            tool("y"),
            assistant(content="done"),
            user("again"),
            assistant(call("x", "exec")),
            tool("x"),
        ]
    )
    assert ids(messages) == (
        ["functions.read:0", "functions.read:1", "functions.exec:2"],
        ["functions.read:0", "functions.read:1", "functions.exec:2"],
    )
    assert count_history_tool_calls(messages) == 3


def test_tool_block_is_scoped_to_its_assistant_message():
    # The same raw id on both turns: each answer binds to the call right before it.
    messages, _ = run(
        [
            user(),
            assistant(call("functions.read:0", "read")),
            tool("functions.read:0", "one"),
            assistant(call("functions.read:0", "read")),
            tool("functions.read:0", "two"),
        ]
    )
    assert [(m["tool_call_id"], m["content"]) for m in messages if m["role"] == "tool"] == [
        ("functions.read:0", "one"),
        ("functions.read:1", "two"),
    ]


def test_tool_call_without_a_name_is_unrepairable():
    broken = {"id": "a", "type": "function", "function": {"arguments": "{}"}}
    with pytest.raises(UnrepairableShape, match="without a function name"):
        run([user(), assistant(broken), tool("a")])


def test_rewrite_is_recorded_with_before_and_after():
    _, log = run([user(), assistant(call("functionsread0", "read")), tool("functionsread0")])
    assert [(r.kind, r.message_index, r.before, r.after) for r in log.entries] == [
        ("ids.call", 1, "functionsread0", "functions.read:0"),
        ("ids.result", 2, "functionsread0", "functions.read:0"),
    ]


def test_next_index_continues_after_the_highest_id_a_trimmed_history_holds():
    # The client compacted its history: two calls left, but it holds functions.exec:7.
    messages = [
        user(),
        assistant(call("functions.read:6", "read")),
        tool("functions.read:6"),
        assistant(call("functions.exec:7", "exec")),
        tool("functions.exec:7"),
    ]
    assert count_history_tool_calls(messages) == 8
    assert count_history_tool_calls([user(), assistant(call("call_abc", "read")), tool("call_abc")]) == 1
    # an id that only a tool message still names counts too
    assert count_history_tool_calls([user(), tool("read:11")]) == 12
