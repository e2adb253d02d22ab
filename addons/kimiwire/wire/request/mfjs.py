"""Moonshot Flavored JSON Schema: whether Moonshot's API takes a tool's `parameters` schema.

Moonshot checks `tools[].function.parameters` and `response_format.json_schema.schema` with its
validator MoonshotAI/walle at the `strict` level and refuses the whole request (HTTP 400, `... is
not a valid moonshot flavored json schema, details: <At path 'P': D>`) when one fails. This is
that check, in walle's order and words (walle 196bb0c: validator.go `TraverseSchema`,
`validateTypeAndKeywords`, `CheckAnyOfConflicts`, `TraverseAndCheckRefs`, `CheckRefContext`;
keyword_validators.go; errors.go for the path form), tested on walle's own cases.
"""

from __future__ import annotations

from typing import Any

_COMMON = ("description", "title")
_TOP_LEVEL_ONLY = ("$defs", "$id")
_VALID_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "array", "object"})
_RESERVED_PROPERTY_NAMES = frozenset({"$defs", "$ref", "anyOf", "required", "additionalProperties"})
MAX_ANY_OF_ITEMS = 500  # walle conf.go DefaultValidatorConfig


class SchemaRefused(Exception):
    def __init__(self, path: list[str], detail: str) -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail

    @property
    def where(self) -> str:
        return ".".join(self.path) if self.path else "root"


def _go_value(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "<nil>"
    return str(value)


def _matches(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "null":
        return value is None
    return False


class _SchemaCheck:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def run(self) -> None:
        if not self.root:
            return
        self.traverse(self.root, [])
        self.check_refs(self.root, [])

    def traverse(self, schema: dict[str, Any], path: list[str]) -> None:
        defs = schema.get("$defs")
        if isinstance(defs, dict):
            for name in sorted(defs):
                if not isinstance(defs[name], dict):
                    raise SchemaRefused([*path, "$defs"], "$defs schema must be object")
                self.traverse(defs[name], [*path, "$defs", name])
        if "type" in schema:
            if "anyOf" in schema:
                raise SchemaRefused(
                    path, "when using anyOf, type should be defined in anyOf items instead of the parent schema"
                )
            if "$ref" in schema:
                raise SchemaRefused(
                    path,
                    "when using $ref, type should be defined in the referenced schema instead of the parent schema",
                )
            self.check_type(schema, path)
        for keyword in sorted(schema):
            self.check_keyword(keyword, schema[keyword], schema, [*path, keyword])
        self.check_any_of_conflicts(schema, path)
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict):
                    self.traverse(sub, [*path, "properties", name])
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                self.traverse(schema[key], [*path, key])
        any_of = schema.get("anyOf")
        if isinstance(any_of, list):
            for branch in any_of:
                if isinstance(branch, dict):
                    self.traverse(branch, [*path, "anyOf"])

    def check_type(self, schema: dict[str, Any], path: list[str]) -> None:
        value = schema["type"]
        if isinstance(value, str):
            if value not in _VALID_TYPES:
                raise SchemaRefused(path, "invalid type")
            return
        if not isinstance(value, list):
            raise SchemaRefused(path, "type must be string or array of strings")
        if not value:
            raise SchemaRefused(path, "type array cannot be empty")
        if any(not isinstance(t, str) or t not in _VALID_TYPES for t in value):
            raise SchemaRefused(path, "invalid type in type array")
        if len(value) > 1:
            with_enum = len(value) == 2 and schema.get("enum") is not None
            if with_enum and any(t in ("object", "array") for t in value):
                raise SchemaRefused(path, "object and array cannot be used in combination with multiple types")
            allowed = {*_COMMON, "type", *(_TOP_LEVEL_ONLY if not path else ())}
            for keyword in schema:
                if keyword not in allowed and not with_enum:
                    raise SchemaRefused(path, f"keyword {keyword} is not allowed in combination with multiple types")

    def check_keyword(self, keyword: str, value: Any, schema: dict[str, Any], path: list[str]) -> None:
        if keyword == "properties":
            if not isinstance(value, dict):
                raise SchemaRefused(path, "properties must be an object")
            for name, sub in value.items():
                if name in _RESERVED_PROPERTY_NAMES:
                    raise SchemaRefused(path, f"property name '{name}' is reserved for JSON Schema keywords")
                if not isinstance(sub, dict):
                    raise SchemaRefused(path, f"property schema for '{name}' must be an object")
        elif keyword == "required":
            if not isinstance(value, list):
                raise SchemaRefused(path, "required must be an array")
            if any(not isinstance(name, str) for name in value):
                raise SchemaRefused(path, "items in required array must be strings")
            properties = schema.get("properties")
            declared = properties if isinstance(properties, dict) else {}
            for name in value:
                if name not in declared:
                    raise SchemaRefused(path, f"required property '{name}' is not defined in properties")
        elif keyword == "items":
            if not isinstance(value, dict):
                raise SchemaRefused(path, "items must be an object")
        elif keyword == "anyOf":
            if not isinstance(value, list):
                raise SchemaRefused(path, "anyOf must be an array")
            if not 1 <= len(value) <= MAX_ANY_OF_ITEMS:
                raise SchemaRefused(path, f"anyOf must have 1-{MAX_ANY_OF_ITEMS} items")
            if any(not isinstance(branch, dict) for branch in value):
                raise SchemaRefused(path, "schema in anyOf must be an object")
        elif keyword == "additionalProperties":
            if not isinstance(value, bool | dict):
                raise SchemaRefused(path, "additionalProperties must be a boolean or an object")
        elif keyword == "$defs":
            if not isinstance(value, dict):
                raise SchemaRefused(path, "$defs must be an object")
        elif keyword == "$ref":
            self.check_ref(value, path)
        elif keyword == "enum":
            self.check_enum(value, schema, path)

    def check_ref(self, value: Any, path: list[str]) -> None:
        if not isinstance(value, str):
            raise SchemaRefused(path, "$ref must be a string")
        if value == "#":
            return
        if not value.startswith("#/$defs/"):
            raise SchemaRefused(path, "references must start with #/$defs/")
        if not value[len("#/$defs/") :]:
            raise SchemaRefused(path, "definition name cannot be empty")
        if "$defs" not in self.root:
            raise SchemaRefused(path, f"$defs not found for reference: {value}")

    def check_enum(self, value: Any, schema: dict[str, Any], path: list[str]) -> None:
        if not isinstance(value, list):
            raise SchemaRefused(path, "enum must be an array")
        if not value:
            raise SchemaRefused(path, "enum array cannot be empty")
        kinds = schema.get("type")
        if kinds is None:
            raise SchemaRefused(path[:-1], "type is not defined")
        kinds = [kinds] if isinstance(kinds, str) else kinds
        for item in value:
            if not any(_matches(item, kind) for kind in kinds):
                raise SchemaRefused(
                    path, f"enum value ({_go_value(item)}) does not match any type in [{' '.join(kinds)}]"
                )

    def check_any_of_conflicts(self, schema: dict[str, Any], path: list[str]) -> None:
        any_of = schema.get("anyOf")
        if not isinstance(any_of, list):
            return
        outer = {k for k in schema if k != "anyOf"}
        for branch in any_of:
            conflicts = sorted(k for k in branch if k in outer and k not in _COMMON) if isinstance(branch, dict) else []
            if conflicts:
                raise SchemaRefused(
                    path,
                    f"conflicting keywords found in anyOf with parent: keywords ({', '.join(conflicts)}) are defined "
                    "on the parent schema and inside anyOf; remove them from the parent or from anyOf branches",
                )

    def resolve(self, ref: str) -> dict[str, Any] | None:
        if ref == "#":
            return self.root
        target: Any = self.root.get("$defs")
        for part in ref[len("#/$defs/") :].split("/"):  # a path into a definition: #/$defs/a/items
            target = target.get(part) if isinstance(target, dict) else None
        return target if isinstance(target, dict) else None

    def check_refs(self, schema: dict[str, Any], path: list[str]) -> None:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self.resolve(ref)
            if target is None:
                raise SchemaRefused([], f"invalid $ref path: {ref}")
            conflicts = sorted(k for k in target if k in schema and k != "$ref" and k not in _COMMON)
            if conflicts:
                raise SchemaRefused(
                    path,
                    f"conflicting keywords found after $ref expansion: keywords ({', '.join(conflicts)}) are defined "
                    'both alongside "$ref" and in the referenced schema; remove the duplicates',
                )
            if ("type" in schema and "anyOf" in target) or ("type" in target and "anyOf" in schema):
                raise SchemaRefused(
                    path,
                    "invalid schema after $ref expansion: (when using anyOf, type should be defined in anyOf items "
                    "instead of the parent schema)",
                )
        for key, value in schema.items():
            if key == "$defs":
                continue
            if isinstance(value, dict):
                if key == "properties":
                    for name, sub in value.items():
                        if isinstance(sub, dict):
                            self.check_refs(sub, [*path, "properties", name])
                else:
                    self.check_refs(value, [*path, key])
            elif key == "anyOf" and isinstance(value, list):
                for branch in value:
                    if isinstance(branch, dict):
                        self.check_refs(branch, [*path, "anyOf"])


def schema_refusal(schema: Any) -> SchemaRefused | None:
    """Why Moonshot's validator refuses a tool's `parameters` (or a response_format schema), or None."""
    if not isinstance(schema, dict):
        return SchemaRefused([], "schema must be a dict")
    try:
        _SchemaCheck(schema).run()
    except SchemaRefused as refused:
        return refused
    except RecursionError:
        return SchemaRefused([], "schema depth exceeds maximum limit of 30")
    return None
