"""A command result type for JSON objects.

mitmweb's command bar shows a result as `JSON.stringify(value)`: a command returning a str (a JSON
text) shows up quoted and escaped, one returning a dict shows up as JSON. mitmproxy only accepts
results of its registered command types, and has none for objects, so one is registered here
(mitmproxy.types.CommandTypes, the table mitmproxy's own types live in; checked on 12.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from mitmproxy import types


class JSONObject(dict[str, Any]):
    """A command's result that mitmweb shows as a JSON object."""

    @classmethod
    def of(cls, data: dict[str, Any]) -> JSONObject:
        """`data` in plain JSON types (mitmweb writes results with the standard json module)."""
        return cls(orjson.loads(orjson.dumps(data)))


class _JSONObjectType(types._BaseType):
    typ = JSONObject
    display = "json"

    def completion(self, manager: Any, t: Any, s: str) -> Sequence[str]:
        return []

    def parse(self, manager: Any, t: Any, s: str) -> JSONObject:
        value = orjson.loads(s)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return JSONObject(value)

    def is_valid(self, manager: Any, typ: Any, val: Any) -> bool:
        return isinstance(val, dict)


def register() -> None:
    types.CommandTypes.typemap.setdefault(JSONObject, _JSONObjectType())


register()  # before any addon declaring a command that returns JSONObject is added
