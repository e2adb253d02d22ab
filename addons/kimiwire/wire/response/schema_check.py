"""Tool arguments checked against the JSON schema the request declared for the tool.

The check is informational and runs on the proxy's event loop, so its work is bounded whatever
the schema and the arguments are:

- regular expressions (`pattern`, `patternProperties`, and `additionalProperties` next to them)
  run on RE2, which takes linear time: `^(a+)+$` against 30 characters costs microseconds, not the
  minutes of a backtracking engine. A pattern RE2 cannot compile (lookaround, backreferences)
  leaves the arguments not checked;
- `uniqueItems` compares items by hash, not pairwise;
- at most `KEYWORD_BUDGET` keyword evaluations and `TIME_BUDGET` seconds per check (deep `$ref`
  chains, combinators over large arguments); schemas up to `MAX_SCHEMA_BYTES`. Nested `$schema`
  keys are dropped, so every subschema runs under these bounds (jsonschema would switch to its own
  unbounded class there);
- `$ref` resolves only inside the schema: nothing is fetched, not even the metaschemas.
- the schema is not validated against its metaschema first: jsonschema's `check_schema` took 25 s
  for a schema with 2,000 `$defs`, outside any budget. A schema jsonschema cannot use fails during
  the check instead.

Whatever goes wrong (an unresolvable `$ref`, an invalid schema, nesting deeper than the
interpreter allows) makes the result "not checked", with the reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
import re2
from jsonschema import exceptions as schema_errors
from jsonschema import validators
from referencing import Registry
from referencing.exceptions import Unresolvable

KEYWORD_BUDGET = 10_000
TIME_BUDGET = 0.05  # seconds
MAX_SCHEMA_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """`violation`: why the value breaks the schema; `unchecked`: why it could not be checked.
    Both None: the value conforms."""

    violation: str | None = None
    unchecked: str | None = None


class _Unchecked(Exception):
    pass


# -- regular expressions on RE2 ----------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # an unsupported pattern is reported here, not on stderr
_RE2_OPTIONS.never_capture = True


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        raise _Unchecked(f"pattern {pattern[:80]!r} needs a backtracking regex engine ({exc})") from None


def _search(pattern: Any, text: str) -> bool:
    if not isinstance(pattern, str):
        raise _Unchecked(f"pattern {pattern!r} is not a string")
    return _regex(pattern).search(text) is not None


def _shown(value: str, limit: int = 60) -> str:
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield schema_errors.ValidationError(f"{_shown(instance)} does not match {_shown(pattern)}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [k for k in instance if k not in declared and not any(_search(p, k) for p in patterns)]
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif allowed is False and extras:
        names = ", ".join(repr(k) for k in sorted(extras))
        yield schema_errors.ValidationError(f"Additional properties are not allowed ({names} unexpected)")


# -- uniqueItems by hash ---------------------------------------------------------------------


def _identity(value: Any) -> Any:
    """Equal under JSON Schema's equality (1 == 1.0, true != 1, key order ignored) iff equal here."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _identity(v)) for k, v in value.items()))
    return ("other", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if unique and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for position, item in enumerate(instance):
            if position % 1024 == 1023 and time.perf_counter() > _spent.deadline:
                raise _Unchecked(f"took longer than {TIME_BUDGET * 1000:g} ms")
            identity = _identity(item)
            if identity in seen:
                yield schema_errors.ValidationError(f"{instance!r:.200} has non-unique elements")
                return
            seen.add(identity)


# -- the work budget ---------------------------------------------------------------------------

_spent = threading.local()


def _within_budget(run: Callable[[], Any]) -> Any:
    _spent.count, _spent.deadline = 0, time.perf_counter() + TIME_BUDGET
    return run()


def _budgeted(keyword: Any) -> Any:
    def evaluate(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _spent.count += 1
        if _spent.count > KEYWORD_BUDGET:
            raise _Unchecked(f"more than {KEYWORD_BUDGET} keyword evaluations")
        if time.perf_counter() > _spent.deadline:
            raise _Unchecked(f"took longer than {TIME_BUDGET * 1000:g} ms")
        return keyword(validator, value, instance, schema)

    return evaluate


_OVERRIDES = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}


@lru_cache(maxsize=16)
def _bounded_class(cls: Any) -> Any:
    keywords = {name: _budgeted(_OVERRIDES.get(name, fn)) for name, fn in cls.VALIDATORS.items()}
    return validators.extend(cls, keywords)


def _without_nested_dialects(schema: Any) -> tuple[Any, set[str]]:
    """A copy of `schema` without `$schema` below the root, and the keys it uses."""
    keys: set[str] = set()

    def copy(node: Any, root: bool) -> Any:
        if isinstance(node, dict):
            keys.update(k for k in node if isinstance(k, str))
            return {k: copy(v, False) for k, v in node.items() if root or k != "$schema"}
        if isinstance(node, list):
            return [copy(v, False) for v in node]
        return node

    return copy(schema, True), keys


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Any:
    """A bounded validator for the schema, or the reason there is none (cached either way)."""
    if len(schema_json) > MAX_SCHEMA_BYTES:
        return f"schema larger than {MAX_SCHEMA_BYTES} bytes"
    try:
        schema, keys = _without_nested_dialects(orjson.loads(schema_json))
        if {"unevaluatedProperties", "patternProperties"} <= keys:
            return "unevaluatedProperties together with patternProperties (jsonschema runs those on `re`)"
        cls = validators.validator_for(schema)
        return _bounded_class(cls)(schema, registry=Registry())
    except RecursionError:
        return "schema nested too deeply"
    except Exception as exc:  # whatever the schema makes jsonschema raise
        return f"{type(exc).__name__}: {exc}"


def check_arguments(schema: Any, value: Any) -> SchemaCheck:
    """Checks `value` against `schema`; never raises."""
    if not isinstance(schema, dict):
        return SchemaCheck(unchecked="the declared schema is not an object")
    try:
        validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
        if isinstance(validator, str):
            return SchemaCheck(unchecked=validator[:300])
        error = _within_budget(lambda: schema_errors.best_match(validator.iter_errors(value)))
    except _Unchecked as exc:
        return SchemaCheck(unchecked=str(exc))
    except Unresolvable as exc:
        return SchemaCheck(unchecked=f"unresolvable $ref: {exc}"[:300])
    except RecursionError:
        return SchemaCheck(unchecked="schema or arguments nested too deeply")
    except Exception as exc:  # anything else jsonschema raises: the check is informational only
        return SchemaCheck(unchecked=f"{type(exc).__name__}: {exc}"[:300])
    if error is None:
        return SchemaCheck()
    where = "/".join(str(p) for p in error.absolute_path)
    return SchemaCheck(violation=f"{where or '(root)'}: {error.message}"[:300])


def schema_violation(schema: Any, value: Any) -> str | None:
    """A one-line description of why `value` breaks `schema`, or None when it conforms or could
    not be checked (`check_arguments` tells which)."""
    return check_arguments(schema, value).violation
