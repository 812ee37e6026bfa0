"""KServe v2 REST tensors <-> numpy, with Triton's binary-data extension.

JSON tensors carry ``data`` flat or nested (row-major); BYTES elements are strings (UTF-8), ``{"b64": ...}``
objects, or base64 strings when the tensor's ``parameters.content_type`` is ``"base64"``. With the binary
extension the body is the JSON header (``Inference-Header-Content-Length`` bytes) followed by each binary tensor
in input order, each ``parameters.binary_data_size`` bytes. Every size is checked before anything is sliced.
Only decoding happens here; the data plane validates names, datatypes and shapes against the model.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import orjson

from kvserve.proto.tensors import DATATYPES, TensorError, array_from_raw, element_count, raw_payload

from .errors import HttpError

HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    requested: list[str] = field(default_factory=list)
    classification: dict[str, int] = field(default_factory=dict)
    binary_outputs: set[str] = field(default_factory=set)  # names, or "*" for every output
    request_id: str = ""
    timeout_us: int = 0  # Triton's request parameter "timeout" (microseconds; tritonclient's infer(timeout=...)); 0: none


def _fallback(value: Any) -> Any:
    """What orjson cannot write natively: non-contiguous arrays and numpy scalars of other kinds."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value) if value.dtype != object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def dumps(data: Any) -> bytes:
    """JSON bytes, numpy arrays written directly (no Python lists in between)."""
    return orjson.dumps(data, default=_fallback, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_json(data: bytes | memoryview, what: str = "request body") -> Any:
    """orjson first; then the standard parser, which also takes NaN and Infinity as Triton's does (perf_analyzer's
    random FP32 data contains them)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        first = error
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError):
        raise HttpError(f"the {what} is not valid JSON ({first}); send a JSON object") from None


def split_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """(JSON header, binary rest) of an infer body; the header is the whole body without the extension."""
    view = memoryview(body)
    if header_length is None:
        return parse_json(view), view[len(view):]
    if not header_length.strip().isdigit():
        raise HttpError(f"Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}")
    length = int(header_length)
    if length > len(body):
        raise HttpError(f"Inference-Header-Content-Length says the JSON header is {length} bytes but the body has only "
                        f"{len(body)}; send the header length of the JSON part")
    return parse_json(view[:length], "JSON header"), view[length:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(f"{what} must be a JSON object")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(f"{what} must be an integer, got {orjson.dumps(value).decode()[:40]}")
    return value


def _to_bytes(item: Any, name: str, base64_strings: bool) -> bytes:
    try:
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            return base64.b64decode(item["b64"], validate=True)
        if isinstance(item, str):
            return base64.b64decode(item, validate=True) if base64_strings else item.encode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise HttpError(f"input '{name}': an element is not valid base64") from None
    raise HttpError(f"input '{name}': BYTES elements must be strings or {{\"b64\": \"...\"}} objects")


def _flatten(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:  # iterative: a deeply nested body cannot exhaust the Python stack
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _json_tensor(name: str, datatype: str, shape: list[int], data: Any, parameters: Mapping[str, Any]) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        values = _flatten(data) if isinstance(data, list) else [data]
        if len(values) != count:
            raise HttpError(f"input '{name}': data holds {len(values)} elements but shape {shape} needs {count}")
        array = np.empty(count, dtype=object)
        array[:] = [_to_bytes(v, name, parameters.get("content_type") == "base64") for v in values]
        return array.reshape(shape)
    return numbers(name, data, datatype, shape)


def numbers(name: str, data: Any, datatype: str, shape: list[int] | None = None) -> np.ndarray:
    """JSON numbers (flat or nested lists) as an array of ``datatype``, parsed by numpy in one pass: no null,
    no strings, no fractions for integer types, no values outside the type's range."""
    try:
        raw = np.asarray(data)
    except ValueError:
        raise HttpError(f"input '{name}': nested lists have different lengths; send a rectangular tensor") from None
    if raw.dtype.kind not in "biuf":
        raise HttpError(f"input '{name}': {datatype} data must be numbers (or true/false for BOOL)")
    if shape is not None and raw.size != element_count(shape):
        raise HttpError(f"input '{name}': data holds {raw.size} elements but shape {shape} needs {element_count(shape)}")
    dtype = DATATYPES[datatype]
    if dtype.kind in "iub" and raw.dtype.kind == "f":
        raise HttpError(f"input '{name}': {datatype} data must be whole numbers")
    if dtype.kind in "iu" and raw.size:
        limits = np.iinfo(dtype)
        if raw.min() < limits.min or raw.max() > limits.max:
            raise HttpError(f"input '{name}': data does not fit {datatype} (values must lie in [{limits.min}, {limits.max}])")
    array = raw.astype(dtype, copy=False)
    return array.reshape(shape) if shape is not None else array


def decode_infer(header: Any, binary: memoryview) -> InferRequest:
    """The request's inputs (JSON or binary) and what it asks for: outputs, classification, binary answers."""
    header = _object(header, "the request")
    inputs_json = header.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise HttpError('the request needs "inputs": a list of {"name", "shape", "datatype", "data"} objects')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, tensor in enumerate(inputs_json):
        tensor = _object(tensor, f"inputs[{position}]")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(f'inputs[{position}] needs a "name" string')
        if name in inputs:
            raise HttpError(f"input '{name}' is given twice")
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise HttpError(f"input '{name}': unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
        if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise HttpError(f"input '{name}': \"shape\" must be a list of non-negative integers")
        parameters = _object(tensor.get("parameters"), f"input '{name}' parameters")
        if "binary_data_size" in parameters:
            size = _int(parameters["binary_data_size"], f"input '{name}' binary_data_size")
            if size < 0 or offset + size > len(binary):
                raise HttpError(f"input '{name}': binary_data_size {size} runs past the end of the body "
                                f"({len(binary) - offset} binary bytes left)")
            try:
                inputs[name] = array_from_raw(name, datatype, shape, binary[offset : offset + size].tobytes()
                                              if datatype == "BYTES" else binary[offset : offset + size])
            except TensorError as error:
                raise HttpError(str(error)) from None
            offset += size
        elif "data" in tensor:
            inputs[name] = _json_tensor(name, datatype, shape, tensor["data"], parameters)
        else:
            raise HttpError(f'input \'{name}\' has no "data" and no binary_data_size parameter')
    if offset != len(binary):
        raise HttpError(f"the body has {len(binary) - offset} binary bytes that no input's binary_data_size accounts for")
    request = InferRequest(inputs, request_id=str(header.get("id", "")))
    parameters = _object(header.get("parameters"), "request parameters")
    if parameters.get("binary_data_output") is True:
        request.binary_outputs.add("*")
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise HttpError('"outputs" must be a list of {"name", "parameters"} objects')
    for position, output in enumerate(outputs):
        output = _object(output, f"outputs[{position}]")
        name = output.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(f'outputs[{position}] needs a "name" string')
        request.requested.append(name)
        out_parameters = _object(output.get("parameters"), f"output '{name}' parameters")
        if out_parameters.get("binary_data") is True:
            request.binary_outputs.add(name)
        if "classification" in out_parameters:
            request.classification[name] = _int(out_parameters["classification"], f"output '{name}' classification")
    if "timeout" in parameters:
        request.timeout_us = _int(parameters["timeout"], "timeout (microseconds)")
        if request.timeout_us < 0:
            raise HttpError(f"timeout must be a number of microseconds >= 0, got {request.timeout_us}")
    if "top_k" in parameters:
        k = _int(parameters["top_k"], "top_k")
        for name in request.requested or [""]:
            request.classification.setdefault(name, k)
    return request


def _json_data(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    return np.ascontiguousarray(array).reshape(-1)  # orjson serializes numpy arrays natively


def encode_infer(model_name: str, model_version: str, request_id: str, outputs: Mapping[str, np.ndarray],
                 binary_outputs: set[str]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) of the answer; outputs asked for as binary follow the JSON header."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes | np.ndarray] = []
    for name, array in outputs.items():
        datatype, payload = raw_payload(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if "*" in binary_outputs or name in binary_outputs:
            blob = payload if isinstance(payload, bytes) else payload.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = _json_data(array)
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request_id:
        answer["id"] = request_id
    header = dumps(answer)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)

