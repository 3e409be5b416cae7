"""The MLflow signature as JSON Schema: every column type, tensors, no signature, hostile specs.

Signatures are written by MLflow's own schema types (`Schema.to_json()`, as `mlflow.models`
writes them into MLmodel), then read back the way the service reads an upload's MLmodel.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from mlflow.types import DataType
from mlflow.types.schema import (
    AnyType,
    Array,
    ColSpec,
    Map,
    Object,
    Property,
    Schema,
    TensorSpec,
)

from app.registration.json_schema import signature_json_schema


def stored(inputs: Schema | None, outputs: Schema | None = None) -> dict[str, Any]:
    """A registration's `api_schema`, as the service keeps it from MLmodel."""
    return {
        "inputs": json.loads(inputs.to_json()) if inputs is not None else None,
        "outputs": json.loads(outputs.to_json()) if outputs is not None else None,
    }


class TestColumnTypes:
    @pytest.mark.parametrize(
        ("mlflow_type", "expected"),
        [
            (DataType.string, {"type": "string"}),
            (DataType.integer, {"type": "integer"}),
            (DataType.long, {"type": "integer"}),
            (DataType.float, {"type": "number"}),
            (DataType.double, {"type": "number"}),
            (DataType.boolean, {"type": "boolean"}),
            (DataType.binary, {"type": "string", "format": "byte"}),
            (DataType.datetime, {"type": "string", "format": "date-time"}),
        ],
    )
    def test_each_mlflow_type_has_its_json_schema(
        self, mlflow_type: DataType, expected: dict[str, str]
    ) -> None:
        signature = stored(Schema([ColSpec(mlflow_type, "x")]), Schema([ColSpec(mlflow_type, "y")]))
        assert signature_json_schema(signature) == {
            "inputSchema": {"type": "object", "properties": {"x": expected}, "required": ["x"]},
            "outputSchema": {"type": "object", "properties": {"y": expected}, "required": ["y"]},
        }

    def test_every_mlflow_data_type_is_covered(self) -> None:
        # A new MLflow type would otherwise leave every signature using it without a schema.
        for mlflow_type in DataType:
            signature = stored(Schema([ColSpec(mlflow_type, "x")]))
            assert signature_json_schema(signature) is not None, mlflow_type

    def test_required_lists_only_required_columns_in_order(self) -> None:
        signature = stored(
            Schema(
                [
                    ColSpec(DataType.double, "age"),
                    ColSpec(DataType.string, "note", required=False),
                    ColSpec(DataType.boolean, "smoker"),
                ]
            ),
            Schema([ColSpec(DataType.long)]),
        )
        assert signature_json_schema(signature) == {
            "inputSchema": {
                "type": "object",
                "properties": {
                    "age": {"type": "number"},
                    "note": {"type": "string"},
                    "smoker": {"type": "boolean"},
                },
                "required": ["age", "smoker"],
            },
            "outputSchema": {
                "type": "object",
                "properties": {"output": {"type": "integer"}},
                "required": ["output"],
            },
        }

    def test_several_unnamed_outputs_are_numbered(self) -> None:
        signature = stored(
            Schema([ColSpec(DataType.double, "x")]),
            Schema([ColSpec(DataType.long), ColSpec(DataType.double)]),
        )
        result = signature_json_schema(signature)
        assert result is not None
        assert result["outputSchema"]["properties"] == {
            "output": {"type": "integer"},
            "output_1": {"type": "number"},
        }

    def test_nested_array_object_map_and_any(self) -> None:
        signature = stored(
            Schema(
                [
                    ColSpec(Array(DataType.long), "ids"),
                    ColSpec(
                        Object(
                            [
                                Property("lat", DataType.double),
                                Property("tags", Array(DataType.string), required=False),
                            ]
                        ),
                        "place",
                    ),
                    ColSpec(Map(DataType.double), "weights"),
                    ColSpec(AnyType(), "extra", required=False),
                ]
            ),
            Schema([ColSpec(DataType.double, "score")]),
        )
        result = signature_json_schema(signature)
        assert result is not None
        assert result["inputSchema"] == {
            "type": "object",
            "properties": {
                "ids": {"type": "array", "items": {"type": "integer"}},
                "place": {
                    "type": "object",
                    "properties": {
                        "lat": {"type": "number"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["lat"],
                },
                "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                "extra": {},
            },
            "required": ["ids", "place", "weights"],
        }

    def test_inputs_alone_give_an_open_output_schema(self) -> None:
        result = signature_json_schema(stored(Schema([ColSpec(DataType.string, "text")])))
        assert result is not None and result["outputSchema"] == {}


class TestNoSchema:
    def test_no_signature(self) -> None:
        assert signature_json_schema(None) is None

    def test_tensor_signature(self) -> None:
        signature = stored(
            Schema([TensorSpec(np.dtype("float32"), (-1, 28, 28), "image")]),
            Schema([TensorSpec(np.dtype("float32"), (-1, 10))]),
        )
        assert signature_json_schema(signature) is None

    def test_column_inputs_with_tensor_outputs(self) -> None:
        signature = stored(
            Schema([ColSpec(DataType.double, "x")]),
            Schema([TensorSpec(np.dtype("float32"), (-1, 10))]),
        )
        assert signature_json_schema(signature) is None

    @pytest.mark.parametrize(
        "signature",
        [
            {"inputs": None, "outputs": None},
            {"inputs": [], "outputs": None},
            {"inputs": "not a list", "outputs": None},
            {"inputs": ["not a mapping"], "outputs": None},
            {"inputs": [{"name": "x"}], "outputs": None},  # no type
            {"inputs": [{"type": "quaternion", "name": "x"}], "outputs": None},
            {"inputs": [{"type": "double", "name": 7}], "outputs": None},
            {"inputs": [{"type": "array", "name": "x"}], "outputs": None},  # no items
            {"inputs": [{"type": "object", "name": "x", "properties": []}], "outputs": None},
            {"inputs": [{"type": "map", "name": "x", "values": "double"}], "outputs": None},
            {"inputs": [{"type": "double", "name": "x"}], "outputs": {"type": "double"}},
            "not a mapping",
        ],
    )
    def test_anything_else_is_left_out(self, signature: Any) -> None:
        assert signature_json_schema(signature) is None

    def test_deep_nesting_is_left_out_without_recursing_far(self) -> None:
        spec: dict[str, Any] = {"type": "double"}
        for _ in range(500):
            spec = {"type": "array", "items": spec}
        assert signature_json_schema({"inputs": [{**spec, "name": "x"}], "outputs": None}) is None
