"""The remembered schema check gives what `moonshot_schema` gives, for every schema, every time."""

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.request import moonshot_rules
from kimiwire.wire.request.mfjs_rewrite import moonshot_schema
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.request.schema_memo import SchemaMemo
from kimiwire.wire.servers.policy import Flavor, Policy

FIXTURES = Path(__file__).parents[2] / "fixtures"
MCP = json.loads((FIXTURES / "mcp_tool_sets.json").read_text())
WALLE = [
    json.loads(line)["schema"]
    for name in ("valid.jsonl", "invalid.jsonl")
    for line in (FIXTURES / "walle" / name).read_text().splitlines()
]


def parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


SCHEMAS = [t["inputSchema"] for s in MCP.values() for t in s["tools"]] + [parsed(text) for text in WALLE]


def text(answer: Any) -> str:
    """An answer written out whole: NaN, lone surrogates and big integers included."""
    return json.dumps(answer, allow_nan=True)


def test_every_fixture_schema_gets_the_same_answer_missed_and_hit() -> None:
    memo = SchemaMemo()
    expected = [text(moonshot_schema(copy.deepcopy(s))) for s in SCHEMAS]
    assert [text(memo.rewrite(copy.deepcopy(s))) for s in SCHEMAS] == expected
    assert len(memo) > 100
    assert [text(memo.rewrite(copy.deepcopy(s))) for s in SCHEMAS] == expected
    assert sum(1 for e in expected if e != "null") >= 10  # rewrites among them, not only "taken as it is"


def test_a_hit_is_a_fresh_copy() -> None:
    memo = SchemaMemo()
    schema = {"type": "string", "anyOf": [{"type": "string"}, {"type": "number"}]}  # refused, rewritable
    first = memo.rewrite(schema)
    assert first is not None
    first[0]["anyOf"].clear()
    first[1].append("changed by the caller")
    again = memo.rewrite(schema)
    assert text(again) == text(moonshot_schema(schema))


@pytest.mark.parametrize("non_finite", [float("nan"), float("inf"), float("-inf")])
def test_a_value_orjson_writes_as_null_is_never_taken_for_null(non_finite: float) -> None:
    memo = SchemaMemo()
    # refused and rewritten: the rewrite carries the default, null or the float
    with_null = {"type": "string", "anyOf": [{"type": "string"}], "default": None}
    with_float = {"type": "string", "anyOf": [{"type": "string"}], "default": non_finite}
    for schema in (with_null, with_float, with_null, with_float):
        answer = memo.rewrite(schema)
        assert answer is not None and text(answer) == text(moonshot_schema(schema))
    assert orjson.dumps(with_null) == orjson.dumps(with_float)
    assert len(memo) == 1  # only the null one is kept


@pytest.mark.parametrize("odd", ["\ud83d", 2**70])
def test_what_orjson_cannot_write_is_checked_every_time(odd: Any) -> None:
    memo = SchemaMemo()
    schema = {"type": "object", "properties": {"x": {"type": "string", "default": odd}}}
    assert text(memo.rewrite(schema)) == text(moonshot_schema(schema))
    assert len(memo) == 0


def test_the_store_stays_within_its_bytes() -> None:
    memo = SchemaMemo(max_bytes=4_000, largest_kept=2_000)
    for n in range(200):
        schema = {"type": "object", "properties": {f"p{n}": {"type": "string", "description": "d" * 20}}}
        assert text(memo.rewrite(schema)) == text(moonshot_schema(schema))
        assert memo.held_bytes <= 4_000
    assert 0 < len(memo) < 200
    big = {"type": "object", "description": "x" * 3_000}
    before = len(memo)
    assert text(memo.rewrite(big)) == text(moonshot_schema(big))
    assert len(memo) == before  # larger than the largest kept: checked, not kept


schema_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.sampled_from([1.0, 0.5, float("nan")]),
        st.sampled_from(["string", "object", "integer", "number", "array", "null", "x"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "properties",
                    "items",
                    "anyOf",
                    "required",
                    "enum",
                    "default",
                    "additionalProperties",
                    "$ref",
                    "$defs",
                    "minimum",
                    "nullable",
                    "a",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(schema_values, min_size=1, max_size=4))
def test_generated_schemas_get_the_same_answer_from_the_memo(schemas: list[Any]) -> None:
    memo = SchemaMemo()
    for schema in schemas + schemas:
        assert text(memo.rewrite(copy.deepcopy(schema))) == text(moonshot_schema(copy.deepcopy(schema)))


def test_the_repaired_request_is_the_same_with_a_warm_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moonshot_rules, "SCHEMA_MEMO", SchemaMemo())
    policy = Policy.build(Flavor.MOONSHOT)
    tools = [
        {"type": "function", "function": {"name": t["name"], "parameters": t["inputSchema"]}}
        for s in MCP.values()
        for t in s["tools"]
    ]
    body = orjson.dumps({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hi"}], "tools": tools})
    cold = repair_request_body(body, policy)
    warm = repair_request_body(body, policy)
    assert cold.body is not None and any(e.kind == "compat.tool_schema" for e in cold.log.entries)
    assert warm.body == cold.body
    assert warm.log.as_list() == cold.log.as_list()
