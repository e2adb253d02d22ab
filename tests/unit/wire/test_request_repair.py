import orjson
import pytest
from kimiwire.wire.arguments import fix_history_arguments, fix_response_arguments
from kimiwire.wire.request.reasoning import current_loop_start
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import Flavor, Policy, detect_flavor

from tests.support.conversations import assistant, body, call, tool, user

SELF = Policy.build(Flavor.SELFHOSTED)
MOON = Policy.build(Flavor.MOONSHOT)
DEEP = Policy.build(Flavor.DEEPINFRA)


def repaired(payload, policy=SELF):
    result = repair_request_body(orjson.dumps(payload), policy)
    assert result.skipped is None
    return (orjson.loads(result.body) if result.body is not None else payload), result


# -- flavors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,flavor",
    [
        ("api.moonshot.ai", Flavor.MOONSHOT),
        ("api.moonshot.cn", Flavor.MOONSHOT),
        ("platform.kimi.ai", Flavor.MOONSHOT),
        ("api.deepinfra.com", Flavor.DEEPINFRA),
        ("127.0.0.1", Flavor.SELFHOSTED),
        ("notmoonshot.ai.example", Flavor.SELFHOSTED),
        ("evil-moonshot.ai", Flavor.SELFHOSTED),
    ],
)
def test_flavor_from_host(host, flavor):
    assert detect_flavor(host) is flavor


def test_auto_reasoning_depends_on_flavor():
    assert SELF.reasoning == "strip"
    assert MOON.reasoning == "loop"
    assert DEEP.reasoning == "loop"
    assert Policy.build(Flavor.MOONSHOT, reasoning="keep").reasoning == "keep"


# -- reasoning -----------------------------------------------------------------------------


def history_with_reasoning():
    return [
        user("u1"),
        assistant(call("functions.read:0", "read"), reasoning_content="r1"),
        tool("functions.read:0"),
        assistant(content="final", reasoning_content="r2"),
        user("u2"),
        assistant(call("functions.read:1", "read"), reasoning="r3"),
        tool("functions.read:1"),
        assistant(call("functions.exec:2", "exec", {"command": "ls"})),
        tool("functions.exec:2"),
    ]


def test_loop_start_is_after_last_assistant_without_tool_calls():
    assert current_loop_start(history_with_reasoning()) == 4
    assert current_loop_start([user(), assistant(call("a", "read")), tool("a")]) == 0


def test_strip_removes_every_reasoning_key():
    out, result = repaired(body(history_with_reasoning()))
    for m in out["messages"]:
        assert not {"reasoning_content", "reasoning", "reasoning_text"} & m.keys()
    assert result.log.kinds().count("reasoning.stripped") == 3


def test_loop_keeps_current_loop_under_reasoning_content():
    out, result = repaired(body(history_with_reasoning()), Policy.build(Flavor.DEEPINFRA))
    msgs = out["messages"]
    assert "reasoning_content" not in msgs[1] and "reasoning_content" not in msgs[3]
    assert msgs[5]["reasoning_content"] == "r3" and "reasoning" not in msgs[5]
    assert "reasoning_content" not in msgs[7]  # deepinfra: no placeholder
    assert "reasoning.renamed" in result.log.kinds()


def test_moonshot_placeholder_for_tool_call_turn_without_reasoning():
    out, result = repaired(body(history_with_reasoning(), thinking={"type": "enabled"}), MOON)
    assert out["messages"][7]["reasoning_content"] == " "
    assert out["messages"][5]["reasoning_content"] == "r3"
    assert "reasoning.placeholder" in result.log.kinds()


def test_moonshot_no_placeholder_when_thinking_disabled():
    out, _ = repaired(body(history_with_reasoning(), model="kimi-k2.6", thinking={"type": "disabled"}), MOON)
    assert "reasoning_content" not in out["messages"][7]


def test_moonshot_placeholder_for_a_model_that_always_thinks():
    # kimi-k2-thinking thinks whatever `thinking` says: the field goes, the placeholder comes
    out, _ = repaired(body(history_with_reasoning(), thinking={"type": "disabled"}), MOON)
    assert out["messages"][7]["reasoning_content"] == " " and "thinking" not in out


def test_moonshot_empty_reasoning_counts_as_missing():
    msgs = [user(), assistant(call("functions.read:0", "read"), reasoning_content=""), tool("functions.read:0")]
    out, _ = repaired(body(msgs), MOON)
    assert out["messages"][1]["reasoning_content"] == " "


def test_keep_leaves_reasoning():
    payload = body(history_with_reasoning())
    out, result = repaired(payload, Policy.build(Flavor.SELFHOSTED, reasoning="keep"))
    assert out == payload and result.body is None


# -- top-level fields ----------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [({"type": "enabled"}, True), ({"type": "disabled"}, False)])
def test_selfhosted_translates_thinking(value, expected):
    out, result = repaired(body([user()], thinking=value))
    assert "thinking" not in out
    assert out["chat_template_kwargs"] == {"thinking": expected}
    assert "field.thinking" in result.log.kinds()


def test_selfhosted_keeps_explicit_chat_template_kwargs():
    out, _ = repaired(body([user()], thinking={"type": "disabled"}, chat_template_kwargs={"thinking": True, "x": 1}))
    assert out["chat_template_kwargs"] == {"thinking": True, "x": 1}


def test_deepinfra_translates_disabled_to_reasoning_effort_none():
    out, _ = repaired(body([user()], thinking={"type": "disabled"}, reasoning_effort="medium"), DEEP)
    assert "thinking" not in out and out["reasoning_effort"] == "none"
    out, _ = repaired(body([user()], thinking={"type": "enabled"}, reasoning_effort="medium"), DEEP)
    assert "thinking" not in out and out["reasoning_effort"] == "medium"


def test_moonshot_keeps_thinking_and_maps_enable_thinking():
    out, _ = repaired(body([user()], thinking={"type": "enabled"}), MOON)
    assert out["thinking"] == {"type": "enabled"}
    out, _ = repaired(body([user()], enable_thinking=False), MOON)
    assert out["thinking"] == {"type": "disabled"} and "enable_thinking" not in out


def test_enable_thinking_dropped_for_selfhosted():
    out, _ = repaired(body([user()], enable_thinking=False))
    assert "enable_thinking" not in out and out["chat_template_kwargs"] == {"thinking": False}


# -- history hygiene -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "given,expected,kind",
    [
        ('{"path": "a"}', '{"path": "a"}', None),
        ("", "{}", "args.empty"),
        ('"{\\"path\\": \\"a\\"}"', '{"path": "a"}', "args.double_encoded"),
        ('{"path":"a"}{"path":"a"}', '{"path":"a"}', "args.duplicated"),
        ('{"path":"a"} trailing', '{"path":"a"}', "args.trailing_garbage"),
        ('{"path":"a"}{"path":"b"}', "{}", "args.replaced"),
        ('{"path": "a', "{}", "args.replaced"),
        ("[1, 2]", "{}", "args.replaced"),
    ],
)
def test_history_arguments(given, expected, kind):
    fixed = fix_history_arguments(given)
    assert fixed.kind == kind
    assert orjson.loads(fixed.text) == orjson.loads(expected)


def test_response_arguments_use_json_repair_only_for_objects():
    fixed = fix_response_arguments('{"path": "a.txt"')
    assert fixed.kind == "args.json_repaired" and orjson.loads(fixed.text) == {"path": "a.txt"}
    fixed = fix_response_arguments("not json at all")
    assert fixed.kind == "args.invalid" and fixed.text == "not json at all"


def test_request_history_arguments_are_repaired_and_recorded():
    msgs = [user(), assistant(call("functions.read:0", "read", "")), tool("functions.read:0")]
    out, result = repaired(body(msgs))
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert [(r.kind, r.message_index, r.before, r.after) for r in result.log.entries] == [("args.empty", 1, "", "{}")]


def test_moonshot_drops_empty_assistant_and_empty_text_parts():
    msgs = [
        user(),
        assistant(content=""),
        user("again"),
        assistant(call("functions.read:0", "read"), content=[{"type": "text", "text": ""}], reasoning_content="r"),
        tool("functions.read:0"),
    ]
    out, result = repaired(body(msgs), MOON)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "user", "assistant", "tool"]
    assert out["messages"][2]["content"] == ""
    dropped = [r for r in result.log.entries if r.kind == "message.dropped_empty"]
    assert [r.message_index for r in dropped] == [1]
    # indexes of later repairs refer to the list the client sent
    assert {r.message_index for r in result.log.entries if r.kind == "content.empty_part_removed"} == {3}


def test_selfhosted_keeps_empty_assistant_messages():
    msgs = [user(), assistant(content=""), user("again")]
    out, result = repaired(body(msgs))
    assert len(out["messages"]) == 3 and result.body is None


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"model": "k", "messages": {"role": "user"}}', "not a list"),
        (b'{"model": "k"}', "missing"),
        (
            orjson.dumps(body([user(), {"role": "assistant", "tool_calls": [{"id": "a", "function": {}}]}])),
            "without a function name",
        ),
    ],
)
def test_bad_input_is_forwarded_unchanged_with_a_reason(raw, reason):
    result = repair_request_body(raw, SELF)
    assert result.body is None
    assert reason in result.skipped


def test_nothing_to_repair_gives_no_new_body():
    payload = body([user(), assistant(call("functions.read:0", "read")), tool("functions.read:0")])
    result = repair_request_body(orjson.dumps(payload), SELF)
    assert result.body is None and not result.log and result.skipped is None
    assert result.facts.history_tool_calls == 1
    assert set(result.facts.tools) == {"read", "exec"}


def test_keep_ids_option():
    msgs = [user(), assistant(call("functionsread0", "read")), tool("functionsread0")]
    out, _ = repaired(body(msgs), Policy.build(Flavor.SELFHOSTED, tool_ids="keep"))
    assert out["messages"][1]["tool_calls"][0]["id"] == "functionsread0"
