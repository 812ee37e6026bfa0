"""TF Serving REST bodies <-> numpy: ``instances`` (row format) and ``inputs`` (columnar), answers as
``predictions`` and ``outputs``, binary values as ``{"b64": "..."}`` (TF Serving's REST API documentation).

JSON has no dtypes, so values become arrays of the model input's datatype; strings and b64 values become
``bytes`` elements (for a BYTES input, or encoded images the data plane decodes for an image input). Shapes,
names and datatypes are the data plane's to check.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

import numpy as np

from kvserve.plugins.types import TensorSpec
from kvserve.proto.tensors import DATATYPES

from .errors import HttpError
from .v2_codec import numbers


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _has_text(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) or _is_b64(value)


def _bytes_tree(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_bytes_tree(item, name) for item in value]
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise HttpError(f"input '{name}': a \"b64\" value is not valid base64") from None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")  # JSON may hold lone surrogates; bytes are bytes
    raise HttpError(f"input '{name}': mixes strings with {type(value).__name__} values; send all strings or all numbers")


def to_array(name: str, value: Any, spec: TensorSpec | None) -> np.ndarray:
    """One input's JSON value as an array of the model's datatype (bytes for strings and b64)."""
    if _has_text(value):
        tree = _bytes_tree(value, name)
        array = np.array(tree, dtype=object)
        if array.size and any(isinstance(item, list) for item in array.reshape(-1)):
            raise HttpError(f"input '{name}': nested lists have different lengths; send a rectangular tensor")
        if array.ndim == 0:
            array = array.reshape(())
        return array
    datatype = spec.datatype if spec is not None and spec.datatype in DATATYPES and spec.datatype != "BYTES" else "FP32"
    return numbers(name, value, datatype)


def decode_predict(body: Any, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], bool]:
    """(inputs, row format?) of a ``:predict`` body."""
    if not isinstance(body, dict):
        raise HttpError('the request must be a JSON object with "instances" (row format) or "inputs" (columnar format)')
    if ("instances" in body) == ("inputs" in body):
        raise HttpError('send exactly one of "instances" (row format) or "inputs" (columnar format)')
    by_name = {spec.name: spec for spec in specs}
    single = specs[0] if len(specs) == 1 else None
    if "inputs" in body:
        value = body["inputs"]
        if isinstance(value, dict) and not _is_b64(value):
            return {key: to_array(key, item, by_name.get(key)) for key, item in value.items()}, False
        if single is None:
            raise HttpError(f'the model has {len(specs)} inputs; send "inputs" as an object {{name: value}}')
        return {single.name: to_array(single.name, value, single)}, False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise HttpError('"instances" must be a non-empty list, one item per example')
    named = all(isinstance(item, dict) and not _is_b64(item) for item in instances)
    if not named:
        if single is None:
            raise HttpError(f'the model has {len(specs)} inputs; each instance must be an object {{name: value}}')
        return {single.name: to_array(single.name, instances, single)}, True
    keys = set(instances[0])
    if any(set(item) != keys for item in instances):
        raise HttpError("every instance must name the same inputs")
    return {key: to_array(key, [item[key] for item in instances], by_name.get(key)) for key in instances[0]}, True


def _json_value(array: np.ndarray) -> Any:
    """A numeric array as is (orjson writes numpy), a BYTES one as strings, or {"b64"} where not UTF-8."""
    if array.dtype != object:
        return array

    def text(item: Any) -> Any:
        if isinstance(item, bytes):
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(item).decode()}
        return str(item)

    return np.frompyfunc(text, 1, 1)(array).tolist() if array.ndim else text(array.item())


def encode_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _json_value(next(iter(outputs.values())))}
        return {"outputs": {name: _json_value(array) for name, array in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": _json_value(next(iter(outputs.values())))}
    rows = min((array.shape[0] for array in outputs.values() if array.ndim), default=0)
    values = {name: _json_value(array) for name, array in outputs.items()}
    return {"predictions": [{name: value[i] for name, value in values.items()} for i in range(rows)]}
