"""TensorFlow's ``TensorProto`` (as TF Serving's API carries it) <-> numpy, and TF dtype names <-> v2 datatypes.

Decoding accepts ``tensor_content`` (raw little-endian bytes) or the typed ``*_val`` field of the dtype; as in
TensorFlow, a single typed value fills the whole shape. DT_STRING elements stay ``bytes`` (object arrays, the
v2 BYTES datatype), so encoded images reach the data plane's image decoding like v2 BYTES inputs do.
Encoding writes numbers as ``tensor_content`` and strings as ``string_val``, as TF Serving answers.
"""

from __future__ import annotations

import numpy as np

from kvserve.proto import tensorflow_tensor_pb2 as tf
from kvserve.proto.tensors import DATATYPES, TensorError, datatype_of, element_count

# TF dtype enum name <-> v2 datatype (the types both sides have).
TF_TO_V2: dict[str, str] = {
    "DT_FLOAT": "FP32", "DT_DOUBLE": "FP64", "DT_HALF": "FP16", "DT_INT8": "INT8", "DT_INT16": "INT16",
    "DT_INT32": "INT32", "DT_INT64": "INT64", "DT_UINT8": "UINT8", "DT_UINT16": "UINT16", "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64", "DT_BOOL": "BOOL", "DT_STRING": "BYTES",
}
V2_TO_TF: dict[str, str] = {v2: name for name, v2 in TF_TO_V2.items()}

# The typed field that carries each dtype's values (several small integer types share int_val).
VALUE_FIELDS: dict[str, str] = {
    "DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_HALF": "half_val", "DT_INT8": "int_val",
    "DT_INT16": "int_val", "DT_INT32": "int_val", "DT_UINT8": "int_val", "DT_UINT16": "int_val",
    "DT_INT64": "int64_val", "DT_UINT32": "uint32_val", "DT_UINT64": "uint64_val", "DT_BOOL": "bool_val",
    "DT_STRING": "string_val",
}


# A single typed value may fill a shape (TF's rule), but never past what one message may carry: a tiny request
# must not make kvd allocate gigabytes.
MAX_FILL_BYTES = 256 * 1024 * 1024


def dtype_name(number: int) -> str:
    try:
        return tf.DataType.Name(number)
    except ValueError:
        return f"dtype {number}"


def shape_of(shape: tf.TensorShapeProto, name: str) -> tuple[int, ...]:
    if shape.unknown_rank:
        raise TensorError(f"input '{name}': tensor_shape has unknown_rank; send the concrete shape")
    dims = tuple(int(d.size) for d in shape.dim)
    if any(d < 0 for d in dims):
        raise TensorError(f"input '{name}': tensor_shape {list(dims)} has a negative dimension; send the concrete shape")
    return dims


def to_numpy(name: str, proto: tf.TensorProto) -> np.ndarray:
    """One input tensor as numpy, every count checked."""
    kind = dtype_name(proto.dtype)
    v2 = TF_TO_V2.get(kind)
    if v2 is None:
        raise TensorError(f"input '{name}': {kind} is not supported; use one of {', '.join(TF_TO_V2)}")
    shape = shape_of(proto.tensor_shape, name)
    count = element_count(shape)
    field = VALUE_FIELDS[kind]
    if proto.tensor_content and v2 != "BYTES":
        dtype = DATATYPES[v2]
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise TensorError(f"input '{name}': tensor_content is {len(proto.tensor_content)} bytes but shape {list(shape)} "
                              f"of {kind} needs {count * dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    values = getattr(proto, field)
    if len(values) not in (count, 1) or (count == 0 and len(values)):
        raise TensorError(f"input '{name}': {field} holds {len(values)} values but shape {list(shape)} needs {count} "
                          "(or 1, repeated)")
    if len(values) == 1 and count > 1 and count * max(DATATYPES[v2].itemsize, 8) > MAX_FILL_BYTES:
        raise TensorError(f"input '{name}': shape {list(shape)} asks to repeat one value {count} times, more than a "
                          f"request may carry ({MAX_FILL_BYTES >> 20} MiB); send the values")
    if v2 == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values) if len(values) == count else [values[0]] * count
        return array.reshape(shape)
    if kind == "DT_HALF":
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        wide = np.asarray(values)
        dtype = DATATYPES[v2]
        if dtype.kind in "iu" and wide.size:
            limits = np.iinfo(dtype)
            if wide.min() < limits.min or wide.max() > limits.max:
                raise TensorError(f"input '{name}': {field} has values outside the {kind} range [{limits.min}, {limits.max}]")
        array = wide.astype(dtype)
    return (array if array.size == count else np.full(count, array[0], dtype=array.dtype)).reshape(shape)


def from_numpy(array: np.ndarray) -> tf.TensorProto:
    """An output tensor: numbers as raw ``tensor_content``, strings as ``string_val``."""
    v2 = datatype_of(array)
    proto = tf.TensorProto(dtype=tf.DataType.Value(V2_TO_TF[v2]))
    for dim in array.shape:
        proto.tensor_shape.dim.add(size=int(dim))
    if v2 == "BYTES":
        proto.string_val.extend(item.encode() if isinstance(item, str) else bytes(item) for item in array.reshape(-1))
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=DATATYPES[v2]).tobytes()
    return proto
