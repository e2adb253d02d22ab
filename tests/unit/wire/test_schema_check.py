"""The informational schema check never blocks the event loop and never raises."""

import socket
import time

import pytest
from kimiwire.wire.response import schema_check
from kimiwire.wire.response.schema_check import check_arguments, schema_violation

# The backtracking pattern of the issue: with Python's `re`, 27 characters took 4.6 s, doubling per
# character.
CATASTROPHIC = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}}


def timed(schema, value):
    start = time.perf_counter()
    result = check_arguments(schema, value)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("length", [30, 100_000])
def test_a_backtracking_pattern_costs_linear_time(length):
    check_arguments(CATASTROPHIC, {"name": "a"})  # compiled once, as on a real flow
    result, seconds = timed(CATASTROPHIC, {"name": "a" * (length - 1) + "!"})
    assert result.violation and result.violation.startswith("name: ") and "does not match" in result.violation
    assert len(result.violation) <= 300
    assert seconds < 0.5
    assert check_arguments(CATASTROPHIC, {"name": "a" * length}) == schema_check.SchemaCheck()


def test_pattern_properties_and_additional_properties_use_the_same_engine():
    schema = {
        "type": "object",
        "patternProperties": {"^(x+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    key = "x" * 40 + "!"
    result, seconds = timed(schema, {key: 1})
    assert seconds < 0.5
    assert result.violation and "Additional properties are not allowed" in result.violation
    assert check_arguments(schema, {"xxx": "no"}).violation == "xxx: 'no' is not of type 'integer'"
    assert check_arguments(schema, {"xxx": 3}) == schema_check.SchemaCheck()


def test_a_pattern_re2_cannot_run_is_not_checked_and_says_why():
    schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": "^(?=a)a$"}}}
    result = check_arguments(schema, {"p": "b"})
    assert result.violation is None and "backtracking" in result.unchecked


@pytest.mark.parametrize(
    "schema,why",
    [
        ({"type": "object", "properties": {"p": {"$ref": "#/$defs/missing"}}}, "unresolvable $ref"),
        ({"$ref": "other.json#/x"}, "unresolvable $ref"),
        ({"type": "object", "properties": {"p": {"type": "strin"}}}, "UnknownType"),
        ({"patternProperties": {"a": {}}, "unevaluatedProperties": False}, "unevaluatedProperties"),
        ({"description": "x" * (schema_check.MAX_SCHEMA_BYTES + 1)}, "larger than"),
    ],
)
def test_a_schema_that_cannot_be_used_is_not_checked_and_never_raises(schema, why):
    result = check_arguments(schema, {"p": "v"})
    assert result.violation is None and why in result.unchecked
    assert schema_violation(schema, {"p": "v"}) is None


def test_a_remote_ref_is_never_fetched():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        result = check_arguments({"$ref": f"http://127.0.0.1:{port}/schema.json"}, {"p": 1})
        with pytest.raises(TimeoutError):
            server.accept()
    assert "unresolvable $ref" in result.unchecked


def test_a_long_ref_chain_is_bounded():
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(5000)}
    defs["d5000"] = {"type": "string"}
    result, seconds = timed({"$defs": defs, "$ref": "#/$defs/d0"}, 1)
    assert result.violation is None and result.unchecked
    assert seconds < 2


def test_a_self_referencing_schema_over_deep_arguments_is_bounded():
    schema = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    value: dict = {}
    for _ in range(3000):
        value = {"child": value}
    result, seconds = timed(schema, value)
    assert result.violation is None and result.unchecked
    assert seconds < 2


def test_combinators_over_large_arguments_stop_at_the_budget():
    branch = {"type": "object", "properties": {"v": {"type": "integer", "minimum": 0}}}
    schema = {"type": "array", "items": {"anyOf": [branch] * 50}}
    result, seconds = timed(schema, [{"v": -1}] * 2000)
    assert result.violation is None and result.unchecked  # the count or the clock, whichever comes first
    assert seconds < 2


def test_unique_items_is_not_quadratic():
    schema = {"type": "array", "uniqueItems": True}
    items = [{"k": i, "tags": [i, str(i)]} for i in range(3_000)]  # pairwise: 4.5 million comparisons
    assert check_arguments(schema, items[:500]) == schema_check.SchemaCheck()
    result, seconds = timed(schema, items)
    assert result.violation is None and seconds < 1  # conforms, or the clock stopped it on a busy machine
    many = [{"k": i, "tags": [i, str(i)]} for i in range(300_000)]  # unique: a violation would be false
    result, seconds = timed(schema, many)  # conforms, or the clock stops it (it did under load)
    assert result.violation is None and seconds < 1
    result = check_arguments(schema, [*items[:10], {"tags": [3, "3"], "k": 3.0}])
    assert result.violation and "non-unique" in result.violation


@pytest.mark.parametrize(
    "items,unique",
    [([1, 1.0], False), ([1, True], True), ([0, False], True), ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False)],
)
def test_unique_items_follows_json_schema_equality(items, unique):
    result = check_arguments({"type": "array", "uniqueItems": True}, items)
    assert (result.violation is None) is unique and result.unchecked is None


def test_ordinary_violations_read_as_before():
    schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    assert schema_violation(schema, {}) == "(root): 'path' is a required property"
    assert schema_violation(schema, {"path": 3}) == "path: 3 is not of type 'string'"
    assert schema_violation(schema, {"path": "a"}) is None


def test_draft07_definitions_refs_resolve_without_any_registry():
    # the shape zod-to-json-schema gives MCP tools: draft-07, `$ref` into `definitions`
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"p": {"$ref": "#/definitions/P"}},
        "definitions": {"P": {"type": "string", "pattern": "^a+$"}},
        "required": ["p"],
        "additionalProperties": False,
    }
    assert check_arguments(schema, {"p": "aaa"}) == schema_check.SchemaCheck()
    assert check_arguments(schema, {"p": "b"}).violation == "p: 'b' does not match '^a+$'"
    assert check_arguments(schema, {"p": "a", "x": 1}).violation == (
        "(root): Additional properties are not allowed ('x' unexpected)"
    )


def test_a_call_whose_schema_cannot_be_checked_is_recorded_and_delivered_unchanged():
    from kimiwire.wire.facts import RequestFacts
    from kimiwire.wire.repairs import RepairLog
    from kimiwire.wire.response.tool_calls import finalize_call
    from kimiwire.wire.servers.policy import Flavor, Policy

    facts = RequestFacts(tools={"read": {"$ref": "#/$defs/missing"}}, tools_declared=True)
    log = RepairLog()
    call = finalize_call("read", "functions.read:0", '{"path":"/w/a"}', 0, facts, Policy.build(Flavor.SELFHOSTED), log)
    assert call["function"]["arguments"] == '{"path":"/w/a"}'
    kinds = {entry["kind"]: entry for entry in log.as_list()}
    assert "args.schema_unchecked" in kinds and "unresolvable $ref" in kinds["args.schema_unchecked"]["after"]
