"""A small JSON Schema validator for `message.json_schema` assertions.

The project's dependencies do not include a JSON Schema library, and message assertions need
only the common core: `type`, `enum`, `const`, the numeric and string bounds, `pattern`,
`properties` / `required` / `additionalProperties`, `items` / `minItems` / `maxItems` /
`uniqueItems`, and `allOf` / `anyOf` / `oneOf` / `not`. Annotations (`title`, `description`,
`$schema`, `$comment`, `default`, `examples`) are accepted and ignored. Any other keyword is
refused when the scenario is loaded, so no part of a schema is silently not checked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator

from pydantic import JsonValue

ANNOTATIONS = frozenset({"title", "description", "$schema", "$comment", "default", "examples"})
KEYWORDS = frozenset(
    {
        "type", "enum", "const",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "pattern",
        "properties", "required", "additionalProperties", "minProperties", "maxProperties",
        "items", "minItems", "maxItems", "uniqueItems",
        "allOf", "anyOf", "oneOf", "not",
    }
)  # fmt: skip
TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})


class SchemaError(ValueError):
    """The schema itself is malformed or uses a keyword this validator does not check."""


def check_schema(schema: JsonValue, at: str = "") -> None:
    """Raise SchemaError naming the place of the first problem in `schema`."""
    where = at or "the root"
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"at {where}: a schema is a mapping or a boolean")
    unknown = sorted(set(schema) - KEYWORDS - ANNOTATIONS)
    if unknown:
        raise SchemaError(f"at {where}: unsupported keyword {_quote(unknown[0])}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if not isinstance(k, str) or k not in TYPES:  # (a mapping or a list is unhashable)
            raise SchemaError(f"at {where}: unknown type {_quote(k)}")
    if "pattern" in schema:
        pattern = schema["pattern"]
        if not isinstance(pattern, str):
            raise SchemaError(f"at {where}: pattern must be a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SchemaError(f"at {where}: bad pattern {_quote(pattern)}: {exc}") from None
    for key in ("properties",):
        props = schema.get(key)
        if props is not None:
            if not isinstance(props, dict):
                raise SchemaError(f"at {where}: {key} must be a mapping")
            for name, sub in props.items():
                check_schema(sub, f"{at}/{key}/{name}")
    for key in ("items", "additionalProperties", "not"):
        if key in schema:
            check_schema(schema[key], f"{at}/{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            subs = schema[key]
            if not isinstance(subs, list) or not subs:
                raise SchemaError(f"at {where}: {key} must be a non-empty list")
            for i, sub in enumerate(subs):
                check_schema(sub, f"{at}/{key}/{i}")
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"at {where}: required must be a list of strings")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise SchemaError(f"at {where}: enum must be a list")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        if key in schema and not _is_number(schema[key]):
            raise SchemaError(f"at {where}: {key} must be a number")
    for key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        value = schema.get(key)
        if key in schema and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise SchemaError(f"at {where}: {key} must be a whole number >= 0")


def _quote(value: object) -> str:
    """repr() of a value from the file, cut short: a problem is one line of sensible length."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:56]}...{text[-1]}"


def validate(instance: JsonValue, schema: JsonValue) -> list[str]:
    """Every way `instance` breaks `schema` (a checked schema), as "path: problem" lines."""
    return list(_errors(instance, schema, ""))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_of(value: JsonValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: JsonValue, kind: str) -> bool:
    actual = _type_of(value)
    return actual == kind or (kind == "number" and actual == "integer")


def _same(a: JsonValue, b: JsonValue) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        _is_number(a) and _is_number(b) and a == b
    )


def _short(value: JsonValue) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _errors(value: JsonValue, schema: JsonValue, path: str) -> Iterator[str]:
    here = path or "/"
    if schema is True:
        return
    if schema is False:
        yield f"{here}: no value is allowed here"
        return
    assert isinstance(schema, dict)  # check_schema ran at load time
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(isinstance(k, str) and _has_type(value, k) for k in kinds):
            yield f"{here}: expected {' or '.join(map(str, kinds))}, got {_type_of(value)}"
            return
    if "const" in schema and not _same(value, schema["const"]):
        yield f"{here}: expected {_short(schema['const'])}, got {_short(value)}"
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_same(value, option) for option in enum):
        yield f"{here}: {_short(value)} is not one of {_short(enum)}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield from _number_errors(value, schema, here)
    if isinstance(value, str):
        yield from _string_errors(value, schema, here)
    if isinstance(value, list):
        yield from _array_errors(value, schema, path)
    if isinstance(value, dict):
        yield from _object_errors(value, schema, path)
    yield from _combinator_errors(value, schema, path)


def _number_errors(value: float, schema: dict[str, JsonValue], here: str) -> Iterator[str]:
    for key, sign in (
        ("minimum", ">="),
        ("maximum", "<="),
        ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<"),
    ):
        bound = schema.get(key)
        if not isinstance(bound, int | float) or isinstance(bound, bool):
            continue
        ok = {
            ">=": value >= bound,
            "<=": value <= bound,
            ">": value > bound,
            "<": value < bound,
        }[sign]
        if not ok:
            yield f"{here}: {value} is not {sign} {bound}"
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and not isinstance(step, bool) and step:
        quotient = value / step
        if not math.isclose(quotient, round(quotient), abs_tol=1e-9):
            yield f"{here}: {value} is not a multiple of {step}"


def _string_errors(value: str, schema: dict[str, JsonValue], here: str) -> Iterator[str]:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        yield f"{here}: shorter than {low} characters"
    if isinstance(high, int) and len(value) > high:
        yield f"{here}: longer than {high} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        yield f"{here}: {_short(value)} does not match /{pattern}/"


def _array_errors(value: list[JsonValue], schema: dict[str, JsonValue], path: str) -> Iterator[str]:
    here = path or "/"
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        yield f"{here}: fewer than {low} items"
    if isinstance(high, int) and len(value) > high:
        yield f"{here}: more than {high} items"
    if schema.get("uniqueItems") is True:
        seen = [json.dumps(v, sort_keys=True) for v in value]
        if len(set(seen)) != len(seen):
            yield f"{here}: items are not unique"
    if "items" in schema:
        for i, item in enumerate(value):
            yield from _errors(item, schema["items"], f"{path}/{i}")


def _object_errors(
    value: dict[str, JsonValue], schema: dict[str, JsonValue], path: str
) -> Iterator[str]:
    here = path or "/"
    required = schema.get("required")
    if isinstance(required, list):
        for name in required:
            if isinstance(name, str) and name not in value:
                yield f"{here}: missing required property {name!r}"
    low, high = schema.get("minProperties"), schema.get("maxProperties")
    if isinstance(low, int) and len(value) < low:
        yield f"{here}: fewer than {low} properties"
    if isinstance(high, int) and len(value) > high:
        yield f"{here}: more than {high} properties"
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    for name, item in value.items():
        if name in props:
            yield from _errors(item, props[name], f"{path}/{name}")
        elif "additionalProperties" in schema:
            extra = schema["additionalProperties"]
            if extra is False:
                yield f"{here}: unexpected property {name!r}"
            else:
                yield from _errors(item, extra, f"{path}/{name}")


def _combinator_errors(value: JsonValue, schema: dict[str, JsonValue], path: str) -> Iterator[str]:
    here = path or "/"
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        for sub in all_of:
            yield from _errors(value, sub, path)
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and not any(not validate_at(value, s, path) for s in any_of):
        yield f"{here}: matches none of anyOf"
    one_of = schema.get("oneOf")
    if isinstance(one_of, list):
        n = sum(1 for s in one_of if not validate_at(value, s, path))
        if n != 1:
            yield f"{here}: matches {n} of oneOf, not exactly 1"
    if "not" in schema and not validate_at(value, schema["not"], path):
        yield f"{here}: matches a schema it must not"


def validate_at(value: JsonValue, schema: JsonValue, path: str) -> list[str]:
    return list(_errors(value, schema, path))
