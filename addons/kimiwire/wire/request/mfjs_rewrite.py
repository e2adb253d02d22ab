"""Tool schemas Moonshot's validator refuses, rewritten to ones it takes with the same meaning.

MCP servers and schema generators (zod, pydantic) write JSON Schema that MoonshotAI/walle refuses
(`mfjs.py`): `type` beside `anyOf` or `$ref`, refs into `#/definitions`, boolean sub-schemas,
tuple `items`, `required` naming a property `properties` does not list, an `enum` without a type,
several types with other keywords. Each rewrite keeps the set of instances the schema accepts
(for tool arguments, which are JSON objects); the client's own schema is still the one answers are
checked against (RequestFacts keeps it). A rewrite is used only when the checker then accepts it.
"""

from __future__ import annotations

import copy
from typing import Any

from kimiwire.wire.request.mfjs import schema_refusal

_COMMON = ("description", "title")
# Keywords that only annotate (no effect on which instances are valid): one beside `$ref` that the
# target also has can be dropped from the target without changing the meaning.
_ANNOTATIONS = frozenset({"default", "examples", "deprecated", "readOnly", "writeOnly", "$comment", "format"})
_MAX_DEPTH = 64


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return None


def _disjoint(parent: Any, branch: Any) -> bool:
    if not isinstance(parent, str) or not isinstance(branch, str) or parent == branch:
        return False
    return not (parent == "number" and branch == "integer")


class _Rewriter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.changes: list[str] = []

    def note(self, change: str) -> None:
        if change not in self.changes:
            self.changes.append(change)

    def run(self) -> dict[str, Any]:
        root = self.root
        definitions = root.pop("definitions", None)
        if isinstance(definitions, dict):
            defs = root.setdefault("$defs", {})
            if isinstance(defs, dict):
                for name, sub in definitions.items():
                    defs.setdefault(name, sub)
                self.note("definitions moved to $defs")
            else:
                root["definitions"] = definitions
        if (
            "type" not in root
            and "anyOf" not in root
            and "$ref" not in root
            and ("properties" in root or "required" in root)
        ):
            root["type"] = "object"
            self.note("type object given to the root")
        self.schema(root, 0)  # rewrites the root in place
        return root

    def schema(self, node: Any, depth: int) -> Any:
        if not isinstance(node, dict) or depth > _MAX_DEPTH:
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            node["$ref"] = "#/$defs/" + ref[len("#/definitions/") :]
            self.note("#/definitions refs point into $defs")
        self.beside_ref(node)
        self.beside_any_of(node)
        self.several_types(node)
        self.enum_type(node)
        self.sub_schemas(node, depth)
        self.required_names(node)
        return node

    def resolve(self, ref: str) -> dict[str, Any] | None:
        if not ref.startswith("#/$defs/"):
            return None
        target: Any = self.root.get("$defs")
        for part in ref[len("#/$defs/") :].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return target if isinstance(target, dict) else None

    def beside_ref(self, node: dict[str, Any]) -> None:
        ref = node.get("$ref")
        target = self.resolve(ref) if isinstance(ref, str) else None
        if target is None:
            return
        extra = {k: v for k, v in node.items() if k != "$ref" and k not in _COMMON}
        for k in [k for k in extra if k in target and target[k] == extra[k]]:
            del node[k], extra[k]  # says nothing the target does not
            self.note("keyword beside $ref that the target also has dropped")
        if not extra or ("type" not in extra and not any(k in target for k in extra)):
            return
        # Both the keywords beside the ref and the target apply: the target inlined with them.
        merged = copy.deepcopy(target)
        for k, v in extra.items():
            if k in merged and merged[k] != v and k not in _ANNOTATIONS:
                return  # two different constraints under one keyword: left as it came
            merged[k] = v
        for k in _COMMON:
            if k in node:
                merged[k] = node[k]
        node.clear()
        node.update(merged)
        self.note("$ref with keywords beside it inlined")

    def beside_any_of(self, node: dict[str, Any]) -> None:
        branches = node.get("anyOf")
        if "type" not in node or not isinstance(branches, list):
            return
        parent_type = node.pop("type")
        kept = []
        for branch in branches:
            if branch is True:
                branch = {}
            if not isinstance(branch, dict):
                kept.append(branch)
                continue
            if "type" not in branch and "$ref" not in branch and "anyOf" not in branch:
                branch = {"type": parent_type, **branch}
            elif _disjoint(parent_type, branch.get("type")):
                continue  # no instance has both types: the branch accepts nothing
            kept.append(branch)
        if not kept:
            node["type"] = parent_type
            return
        node["anyOf"] = kept
        self.note("type beside anyOf moved into its branches")

    def several_types(self, node: dict[str, Any]) -> None:
        kinds = node.get("type")
        if not isinstance(kinds, list) or len(kinds) < 2:
            return
        others = [k for k in node if k not in (*_COMMON, "type", "$defs", "$id")]
        if not others or (len(kinds) == 2 and "enum" in node):
            return
        keywords = {k: node.pop(k) for k in others}
        node.pop("type")
        node["anyOf"] = [{"type": kind, **copy.deepcopy(keywords)} for kind in kinds]
        self.note("several types with other keywords made anyOf")

    def enum_type(self, node: dict[str, Any]) -> None:
        values = node.get("enum")
        if "type" in node or not isinstance(values, list) or not values:
            return
        kinds = {_json_type(v) for v in values}
        if kinds == {"integer", "number"}:
            kinds = {"number"}
        if len(kinds) == 1 and None not in kinds:
            node["type"] = kinds.pop()
            self.note("enum given the type of its values")

    def sub_schemas(self, node: dict[str, Any], depth: int) -> None:
        properties = node.get("properties")
        if isinstance(properties, dict):
            for name in list(properties):
                sub = properties[name]
                if sub is True:
                    properties[name] = {}
                    self.note("boolean sub-schema true made {}")
                elif sub is False:
                    # A property that may not appear: left out, with `additionalProperties` unchanged
                    # only when that already refuses it.
                    if node.get("additionalProperties") is False:
                        del properties[name]
                        self.note("boolean sub-schema false dropped")
                else:
                    properties[name] = self.schema(sub, depth + 1)
        items = node.get("items")
        if isinstance(items, list):
            node.pop("items")
            node["prefixItems"] = [self.schema({} if i is True else i, depth + 1) for i in items]
            additional = node.pop("additionalItems", None)
            if isinstance(additional, dict):
                node["items"] = self.schema(additional, depth + 1)
            elif additional is False:
                node["maxItems"] = min(node.get("maxItems", len(items)), len(items))
            self.note("tuple items made prefixItems")
        elif items is True:
            node.pop("items")
            self.note("boolean sub-schema true made {}")
        elif items is False:
            node.pop("items")
            node["maxItems"] = 0
            self.note("boolean items false made maxItems 0")
        elif isinstance(items, dict):
            node["items"] = self.schema(items, depth + 1)
        branches = node.get("anyOf")
        if isinstance(branches, list):
            if any(b is True for b in branches):
                node.pop("anyOf")
                self.note("anyOf with a true branch dropped (it accepts anything)")
            else:
                kept = [self.schema(b, depth + 1) for b in branches if b is not False]
                if kept and len(kept) != len(branches):
                    self.note("false branches of anyOf dropped")
                node["anyOf"] = kept or branches
        for key in ("additionalProperties",):
            if isinstance(node.get(key), dict):
                node[key] = self.schema(node[key], depth + 1)
        defs = node.get("$defs")
        if isinstance(defs, dict):
            for name, sub in defs.items():
                defs[name] = {} if sub is True else self.schema(sub, depth + 1)

    def required_names(self, node: dict[str, Any]) -> None:
        required = node.get("required")
        if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
            return
        properties = node.get("properties")
        if properties is None:
            properties = node["properties"] = {}
        if not isinstance(properties, dict):
            return
        for name in required:
            if name not in properties:
                properties[name] = {}  # required and of any value: what `required` alone said
                self.note("required names given a property")


def moonshot_schema(schema: Any) -> tuple[Any, list[str]] | None:
    """A schema Moonshot takes with the meaning of `schema`, and what changed; None when `schema`
    is taken as it is, or no rewrite makes it acceptable (it is then sent as it came)."""
    if schema_refusal(schema) is None:
        return None
    if schema is True:  # any arguments: tool arguments are objects
        return {"type": "object"}, ["boolean root made type object"]
    if not isinstance(schema, dict):
        return None
    rewriter = _Rewriter(copy.deepcopy(schema))
    try:
        rewritten = rewriter.run()
    except RecursionError:
        return None
    if schema_refusal(rewritten) is not None:
        return None
    return rewritten, rewriter.changes
