"""Moonshot's schema check and rewrite (`moonshot_schema`), remembered per schema.

Agents send the same tools on every turn, and the check (mfjs.py, a port of Moonshot's validator)
visits every node of every schema in Python: for a real MCP tool set it costs more than the rest of
the request repair. `moonshot_schema` is a pure function of the schema's JSON value, so its answer is
kept under the schema's orjson bytes, which name that value: orjson writes each type apart (1 and
1.0, true and 1, in the keys' order). What those bytes do not name is never kept: NaN and the
infinities (orjson writes them as null), and what orjson cannot write (lone surrogates, integers past
64 bits; only the exact decoder reads those).
"""

from __future__ import annotations

import contextlib
import gc
import math
from typing import Any

import orjson

from kimiwire.wire.request.mfjs_rewrite import moonshot_schema

Rewrite = tuple[Any, list[str]] | None

# What the store holds at most (schema bytes and answer bytes): a few agents' tool sets many times over.
MEMO_BYTES = 16 * 2**20
# A schema larger than this is checked every time rather than pushing every other schema out.
LARGEST_KEPT = 1 * 2**20


class SchemaMemo:
    """`moonshot_schema(schema)`, from a bounded first-in first-out store when the same schema came
    before. Each answer is a fresh copy: the body it goes into is the caller's to change."""

    def __init__(self, max_bytes: int = MEMO_BYTES, largest_kept: int = LARGEST_KEPT) -> None:
        self._answers: dict[bytes, bytes | None] = {}  # schema bytes -> orjson of (rewritten, changes)
        self._held = 0
        self.max_bytes = max_bytes
        self.largest_kept = largest_kept

    @property
    def held_bytes(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._answers)

    def rewrite(self, schema: Any) -> Rewrite:
        key = self._key(schema)
        if key is None:
            return moonshot_schema(schema)
        if key in self._answers:
            stored = self._answers[key]
            if stored is None:
                return None
            rewritten, changes = orjson.loads(stored)
            return rewritten, changes
        answer = moonshot_schema(schema)
        with contextlib.suppress(TypeError):  # (orjson.JSONEncodeError is one) an answer orjson cannot write
            self._keep(key, None if answer is None else orjson.dumps(answer))
        return answer

    def _key(self, schema: Any) -> bytes | None:
        try:
            key = orjson.dumps(schema)
        except TypeError:
            return None
        if len(key) > self.largest_kept or (b"null" in key and _holds_a_non_finite_float(schema)):
            return None
        return key

    def _keep(self, key: bytes, stored: bytes | None) -> None:
        size = len(key) + (len(stored) if stored is not None else 0)
        if size > self.max_bytes:
            return
        while self._answers and self._held + size > self.max_bytes:
            oldest = next(iter(self._answers))
            dropped = self._answers.pop(oldest)
            self._held -= len(oldest) + (len(dropped) if dropped is not None else 0)
        self._answers[key] = stored
        self._held += size


def _holds_a_non_finite_float(value: Any) -> bool:
    """A level at a time through `gc.get_referents`, as json_codec reads for big floats."""
    level = [value]
    while level:
        if float in set(map(type, level)):
            for item in level:
                if type(item) is float and not math.isfinite(item):
                    return True
        level = gc.get_referents(*level)
    return False


SCHEMA_MEMO = SchemaMemo()
