"""Tool arguments checked against the JSON schema the request declared for the tool."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from jsonschema import exceptions as schema_errors
from jsonschema import validators


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Any:
    schema = orjson.loads(schema_json)
    cls = validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_violation(schema: Any, value: Any) -> str | None:
    """A one-line description of why `value` breaks `schema`, or None when it conforms
    (or when the schema itself is unusable: that is the harness's problem, not the model's)."""
    if not isinstance(schema, dict):
        return None
    try:
        validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except (schema_errors.SchemaError, orjson.JSONEncodeError, TypeError):
        return None
    error = schema_errors.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or '(root)'}: {error.message}"
