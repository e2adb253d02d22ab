"""Properties of the request repair over generated conversations (hypothesis)."""

import copy

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.request.moonshot_rules import INTERRUPTED_RESULT
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.request.tool_ids import count_history_tool_calls
from kimiwire.wire.servers.policy import Flavor, Policy

NAMES = ["read", "exec", "web_search", "a-b"]
id_shapes = st.one_of(
    st.builds(lambda n, k: f"functions.{n}:{k}", st.sampled_from(NAMES), st.integers(0, 30)),
    st.builds(lambda n, k: f"functions{n}{k}", st.sampled_from(NAMES), st.integers(0, 30)),
    st.builds(lambda h: f"call_{h}", st.text("0123456789abcdef", min_size=4, max_size=30)),
    st.text("abcdef0123456789", min_size=9, max_size=9),
    st.just("functions.read:0"),
    st.none(),
)
texts = st.text(max_size=30)


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(texts)}]
    for _ in range(draw(st.integers(1, 5))):
        messages.append({"role": "user", "content": draw(texts)})
        for _ in range(draw(st.integers(0, 3))):
            calls = [
                {
                    "id": draw(id_shapes),
                    "type": "function",
                    "function": {
                        "name": draw(st.sampled_from(NAMES)),
                        "arguments": draw(
                            st.sampled_from(['{"path": "x"}', "", '"{\\"a\\": 1}"', '{"a":1}{"a":1}', "{broken"])
                        ),
                    },
                }
                for _ in range(draw(st.integers(1, 3)))
            ]
            message = {"role": "assistant", "content": draw(st.one_of(st.none(), texts)), "tool_calls": calls}
            key = draw(st.sampled_from([None, "reasoning_content", "reasoning", "reasoning_text"]))
            if key:
                message[key] = draw(texts)
            messages.append(message)
            answers = draw(st.permutations(calls))
            for c in answers[: draw(st.integers(0, len(answers)))]:
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": draw(st.sampled_from([c["id"], draw(id_shapes)])),
                        "content": draw(texts),
                    }
                )
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": draw(texts)})
    return {"model": "kimi", "messages": messages, "stream": True}


policies = st.builds(
    Policy.build,
    st.sampled_from(list(Flavor)),
    reasoning=st.sampled_from(["auto", "strip", "loop", "keep"]),
)


def apply(body, policy):
    result = repair_request_body(orjson.dumps(body), policy)
    assert result.skipped is None
    return orjson.loads(result.body) if result.body is not None else body


@settings(max_examples=300, deadline=None)
@given(conversations(), policies)
def test_repair_is_idempotent(body, policy):
    once = apply(copy.deepcopy(body), policy)
    twice = repair_request_body(orjson.dumps(once), policy)
    assert twice.body is None, twice.log.summary()


@settings(max_examples=300, deadline=None)
@given(conversations(), policies)
def test_user_and_tool_text_never_changes(body, policy):
    out = apply(copy.deepcopy(body), policy)

    def texts_of(b, role):
        return [m["content"] for m in b["messages"] if m["role"] == role]

    assert texts_of(out, "user") == texts_of(body, "user")
    # (on moonshot a call without a result gets a placeholder result: moonshot_rules.py)
    assert [t for t in texts_of(out, "tool") if t != INTERRUPTED_RESULT] == texts_of(body, "tool")
    assert texts_of(out, "system") == texts_of(body, "system")


@settings(max_examples=300, deadline=None)
@given(conversations(), policies)
def test_ids_are_canonical_unique_and_answers_point_at_calls(body, policy):
    out = apply(copy.deepcopy(body), policy)
    call_ids = [c["id"] for m in out["messages"] if m.get("tool_calls") for c in m["tool_calls"]]
    assert call_ids == [
        f"functions.{c['function']['name']}:{k}"
        for k, c in enumerate(c for m in out["messages"] if m.get("tool_calls") for c in m["tool_calls"])
    ]
    # a response continues after every call and every `:N` the client holds (never below the count)
    assert len(set(call_ids)) == len(call_ids) <= count_history_tool_calls(body["messages"])
    answered = [m["tool_call_id"] for m in out["messages"] if m["role"] == "tool"]
    # every answer that could be bound points at a call, and no call is answered twice
    bound = [a for a in answered if a in call_ids]
    assert len(bound) == len(set(bound))
