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
            name = unnamed if index == 0 else f"{unnamed}_{index}"
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
