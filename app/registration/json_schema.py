"""An MLflow model signature as JSON Schema, the form the Hokusai site renders a model's API from.

The signature comes from the uploaded MLmodel (see `artifacts.inspect_archive`), so it is the
registrant's data: anything this module does not recognise leaves the schema out rather than
failing the registration. Only column-based signatures convert; a tensor-based one has no named
fields to describe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# MLflow's column types (mlflow.types.DataType) and the JSON Schema of a value of each.
SCALAR_TYPES: dict[str, dict[str, str]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "long": {"type": "integer"},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "boolean": {"type": "boolean"},
    "binary": {"type": "string", "format": "byte"},
    "datetime": {"type": "string", "format": "date-time"},
}
# Nested array/object/map specs deeper than this are not a signature anyone writes by hand.
MAX_DEPTH = 32


class _NotConvertible(Exception):
    """The signature is not one this module turns into JSON Schema."""


def signature_json_schema(api_schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`{"inputSchema", "outputSchema"}` from a registration's `api_schema` ({inputs, outputs}).

    None when there is no signature, when it is tensor-based, or when it holds something that is
    not an MLflow column spec. Missing outputs become `{}` (any value): MLflow allows a signature
    of inputs alone.
    """
    if not isinstance(api_schema, Mapping):
        return None
    inputs, outputs = api_schema.get("inputs"), api_schema.get("outputs")
    try:
        if not isinstance(inputs, list) or not inputs:
            raise _NotConvertible("no input columns")
        result = {"inputSchema": _columns(inputs, unnamed="input")}
        result["outputSchema"] = _columns(outputs, unnamed="output") if outputs else {}
    except _NotConvertible:
        return None
    return result


def _columns(specs: object, *, unnamed: str) -> dict[str, Any]:
    """A list of MLflow column specs as an object schema; unnamed columns are numbered.

    The first unnamed column is called `unnamed` ("output"), the next ones `unnamed_1`, ...
    """
    if not isinstance(specs, list):
        raise _NotConvertible("not a list of column specs")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise _NotConvertible("a column spec is not a mapping")
        name = spec.get("name")
        if name is None:
            name = _unnamed(unnamed, index)
        if not isinstance(name, str):
            raise _NotConvertible("a column name is not a string")
        properties[name] = _value(spec, depth=0)
        if spec.get("required", True) is not False and name not in required:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def _value(spec: Mapping[str, Any], *, depth: int) -> dict[str, Any]:
    """The JSON Schema of one column's (or nested spec's) values."""
    if depth > MAX_DEPTH:
        raise _NotConvertible("nested too deeply")
    kind = spec.get("type")
    if not isinstance(kind, str):
        raise _NotConvertible("a spec has no type")
    if kind in SCALAR_TYPES:
        return dict(SCALAR_TYPES[kind])
    if kind == "array":
        return {"type": "array", "items": _nested(spec.get("items"), depth)}
    if kind == "object":
        properties = spec.get("properties")
        if not isinstance(properties, Mapping):
            raise _NotConvertible("an object spec has no properties")
        converted: dict[str, Any] = {}
        required: list[str] = []
        for name, child in properties.items():
            if not isinstance(name, str):
                raise _NotConvertible("a property name is not a string")
            converted[name] = _nested(child, depth)
            if isinstance(child, Mapping) and child.get("required", True) is not False:
                required.append(name)
        return {"type": "object", "properties": converted, "required": required}
    if kind == "map":
        return {"type": "object", "additionalProperties": _nested(spec.get("values"), depth)}
    if kind == "any":
        return {}
    # "tensor", or a type this service does not know.
    raise _NotConvertible(f"type {kind[:40]!r} is not a column type")


def _nested(spec: object, depth: int) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise _NotConvertible("a nested spec is not a mapping")
    return _value(spec, depth=depth + 1)


# The order keys are written in, whatever order the database kept them in (PostgreSQL's JSONB
# sorts object keys by length first).
_KEY_ORDER: tuple[str, ...] = (
    "inputSchema",
    "outputSchema",
    "type",
    "format",
    "items",
    "properties",
    "additionalProperties",
    "required",
)


def in_key_order(schema: Any, api_schema: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """A kept `{"inputSchema", "outputSchema"}` with its keys in the order they were written.

    JSON Schema keywords follow `_KEY_ORDER`; the top-level properties follow the signature's
    column order when `api_schema` (the signature, whose column lists keep their order) is given.
    """
    if not isinstance(schema, Mapping):
        return None
    columns = {"inputSchema": ("inputs", "input"), "outputSchema": ("outputs", "output")}
    result: dict[str, Any] = {}
    for key in _ordered_keys(schema):
        value = _ordered(schema[key])
        if key in columns and isinstance(value, dict) and isinstance(api_schema, Mapping):
            part, unnamed = columns[key]
            value = _in_column_order(value, api_schema.get(part), unnamed)
        result[key] = value
    return result


def _ordered_keys(mapping: Mapping[str, Any]) -> list[str]:
    rank = {key: index for index, key in enumerate(_KEY_ORDER)}
    return sorted(mapping, key=lambda key: rank.get(key, len(rank)))


def _ordered(value: Any) -> Any:
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    if not isinstance(value, Mapping):
        return value
    return {
        key: (
            {name: _ordered(child) for name, child in value[key].items()}
            if key == "properties" and isinstance(value[key], Mapping)
            else _ordered(value[key])
        )
        for key in _ordered_keys(value)
    }


def _in_column_order(schema: dict[str, Any], specs: object, unnamed: str) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not isinstance(specs, list):
        return schema
    names = [
        spec.get("name") if spec.get("name") is not None else _unnamed(unnamed, index)
        for index, spec in enumerate(specs)
        if isinstance(spec, Mapping)
    ]
    ranked = {name: index for index, name in enumerate(names) if isinstance(name, str)}
    order = sorted(properties, key=lambda name: ranked.get(name, len(ranked)))
    return {**schema, "properties": {name: properties[name] for name in order}}


def _unnamed(prefix: str, index: int) -> str:
    """The property name of the unnamed column at `index`: `output`, `output_1`, ..."""
    return prefix if index == 0 else f"{prefix}_{index}"
