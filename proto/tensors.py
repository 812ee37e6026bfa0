"""The one place where v2 protocol tensors become numpy arrays and back, for the server and the client.

Raw contents are taken zero-copy (``np.frombuffer`` over the request bytes; ``kvserve.proto.wire`` keeps
protobuf from copying them first). Every mismatch between what a
tensor declares and what it carries raises ``TensorError`` with a message that says what was expected.
"""

from __future__ import annotations

import struct
from typing import Iterable, Mapping, Sequence

import numpy as np

from kvserve.proto.echo import bounded, short

from kvserve.proto import grpc_service_pb2 as pb

# v2 datatype -> numpy dtype (little-endian, as the protocol's raw contents are).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# v2 datatype -> the InferTensorContents field that carries it typed (FP16 and BF16 have none).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


MAX_RANK = 32  # numpy allows 64; no model has more than a handful
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**40  # far beyond any request size limit, well inside numpy's index range (even with 0 in the shape)


class TensorError(ValueError):
    """A tensor's declared datatype/shape does not match its contents (a client error).

    The message is bounded and escaped: it echoes client-chosen names."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(bounded(str(message)), *args)


_DATATYPE_OF: dict[np.dtype, str] = {}  # numpy dtype -> v2 name, filled as dtypes are met (a per-call lookup)


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name for a numpy array."""
    found = _DATATYPE_OF.get(array.dtype)
    if found is not None:
        return found
    if array.dtype.kind in "OSU":
        found = "BYTES"
    else:
        little = array.dtype.newbyteorder("<")
        found = next((name for name, dtype in DATATYPES.items() if name != "BYTES" and little == dtype), "")
    if not found:
        raise TensorError(f"numpy dtype {array.dtype} has no v2 protocol datatype")
    _DATATYPE_OF[array.dtype] = found
    return found


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _check_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The declared shape, refused before any allocation when numpy could not hold it (even an empty one)."""
    if len(shape) > MAX_RANK:
        raise TensorError(f"input '{short(name)}': shape has {len(shape)} dimensions, at most {MAX_RANK} are accepted")
    dims = tuple(int(d) for d in shape)
    if min(dims, default=0) < 0:
        raise TensorError(f"input '{short(name)}': shape {short(list(dims), 120)} has a negative dimension; send the concrete shape")
    if max(dims, default=0) > MAX_DIM:
        raise TensorError(f"input '{short(name)}': shape {short(list(dims), 120)} has a dimension above {MAX_DIM}; send the real shape")
    nonzero = 1
    for dim in dims:
        nonzero *= max(dim, 1)
    if nonzero > MAX_ELEMENTS:
        raise TensorError(f"input '{short(name)}': shape {short(list(dims), 120)} is too large to describe any tensor; send the real shape")
    return dims


def deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Decode the protocol's BYTES raw layout: each element a 4-byte little-endian length then its bytes."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise TensorError(f"input '{name}': BYTES raw contents end inside a length prefix at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorError(f"input '{name}': BYTES element {len(items)} claims {length} bytes but only {len(raw) - offset} remain")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise TensorError(f"input '{name}': shape needs {count} BYTES elements, raw contents hold {len(items)}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(shape)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"input '{name}': raw contents are {len(raw)} bytes but shape {list(shape)} of {datatype} needs "
            f"{expected} bytes ({count} x {dtype.itemsize})"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def array_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A tensor from the protocol's raw little-endian layout (also Triton's HTTP binary-data extension), every
    size checked against the shape."""
    if datatype not in DATATYPES:
        raise TensorError(f"input '{name}': unknown datatype '{datatype}'; use one of {', '.join(DATATYPES)}")
    return _from_raw(name, datatype, _check_shape(name, shape), raw)


def _from_typed(name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents) -> np.ndarray:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise TensorError(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise TensorError(
            f"input '{name}': {field} holds {len(values)} values but shape {list(shape)} needs {count}"
        )
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise TensorError(f"input '{name}' is {datatype} and must use {field}, not {', '.join(others)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and count:
        wide = np.asarray(values, dtype=np.int64 if dtype.kind == "i" or datatype != "UINT64" else np.uint64)
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise TensorError(f"input '{name}': {field} has values outside the {datatype} range [{limits.min}, {limits.max}]")
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_request_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as numpy arrays, raw (zero-copy) or typed, with every count checked."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; when raw contents are "
            "used, send one entry per input, in the order of `inputs`"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in arrays:
            raise TensorError(f"input '{name}' is given twice")
        if tensor.datatype not in DATATYPES:
            raise TensorError(f"input '{name}': unknown datatype '{tensor.datatype}'; use one of {', '.join(DATATYPES)}")
        shape = _check_shape(name, tensor.shape)
        has_typed = tensor.HasField("contents") and bool(tensor.contents.ListFields())
        if raw:
            if has_typed:
                raise TensorError(f"input '{name}' has both typed contents and raw_input_contents; send only one")
            arrays[name] = _from_raw(name, tensor.datatype, shape, raw[index])
        elif has_typed:
            arrays[name] = _from_typed(name, tensor.datatype, shape, tensor.contents)
        elif element_count(shape) == 0:
            arrays[name] = np.empty(shape, dtype=DATATYPES[tensor.datatype])
        else:
            raise TensorError(f"input '{name}' has no data; set its contents or raw_input_contents")
    return arrays


def raw_payload(array: np.ndarray) -> tuple[str, bytes | np.ndarray]:
    """(v2 datatype, raw little-endian contents) of an array: serialized BYTES, or a contiguous array (no copy
    when it already is one) that becomes bytes with one copy where a ``bytes`` is needed."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return datatype, serialize_bytes(array)
    return datatype, np.ascontiguousarray(array, dtype=DATATYPES[datatype])


def encode_response_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray]) -> None:
    """Append outputs to a response as raw contents.

    A ``kvserve.proto.wire.InferResponseView`` (a plain list of raw contents) takes the arrays themselves and
    copies them once, when it is serialized; a protobuf message needs ``bytes``.
    """
    for name, array in outputs.items():
        datatype, payload = raw_payload(array)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        raw = response.raw_output_contents
        raw.append(payload if isinstance(raw, list) else bytes(payload))


def decode_response_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """A response's outputs as numpy arrays (raw or typed), for clients."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise TensorError(f"response has {len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    result: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        shape = tuple(int(d) for d in tensor.shape)
        if raw:
            result[tensor.name] = _from_raw(tensor.name, tensor.datatype, shape, raw[index])
        else:
            result[tensor.name] = _from_typed(tensor.name, tensor.datatype, shape, tensor.contents)
    return result


def build_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    version: str = "",
    outputs: Iterable[str] = (),
    request_id: str = "",
    classification: Mapping[str, int] | None = None,
    top_k: int = 0,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw little-endian bytes (the cheapest form to send).

    ``classification`` asks for top-k classes of named outputs (Triton's extension); ``top_k`` for the
    first output (or every named output).
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    if top_k:
        request.parameters["top_k"].int64_param = int(top_k)
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype, payload = raw_payload(array)
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(bytes(payload))
    for name in outputs:
        request.outputs.add(name=name)
    for name, k in (classification or {}).items():
        output = next((o for o in request.outputs if o.name == name), None) or request.outputs.add(name=name)
        output.parameters["classification"].int64_param = int(k)
    return request
