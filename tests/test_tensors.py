"""Pure unit tests for kvserve.proto.tensors: numpy <-> v2 protocol tensors, raw and typed, and every error."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto.tensors import (
    CONTENTS_FIELDS,
    DATATYPES,
    TensorError,
    build_infer_request,
    datatype_of,
    decode_request_inputs,
    decode_response_outputs,
    deserialize_bytes,
    encode_response_outputs,
    serialize_bytes,
)

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    """A deterministic array of ``datatype`` that uses the type's range (negative values for signed types)."""
    dtype = DATATYPES[datatype]
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind == "f":
        return (np.linspace(-2.5, 7.25, count)).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    values = np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1] * count, dtype=dtype)[:count]
    return values.reshape(shape)


def bytes_array(items, shape=None) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array.reshape(shape if shape is not None else (len(items),))


def request_with(*inputs: dict, raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    """A hand-built request: each dict is name/datatype/shape and optionally contents={field: values}."""
    request = pb.ModelInferRequest(model_name="m")
    for spec in inputs:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=list(spec["shape"]))
        for field, values in spec.get("contents", {}).items():
            getattr(tensor.contents, field).extend(values)
    for blob in raw or []:
        request.raw_input_contents.append(blob)
    return request


def base_object(array: np.ndarray):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


# --- datatypes ---------------------------------------------------------------------------------------------


def test_datatypes_cover_the_v2_protocol():
    assert set(DATATYPES) == {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                              "FP16", "FP32", "FP64", "BYTES"}
    # every numeric dtype is little-endian (or has no byte order)
    for name in NUMERIC:
        assert DATATYPES[name].byteorder in "<|=", name


@pytest.mark.parametrize("datatype", NUMERIC)
def test_datatype_of_native_arrays(datatype):
    assert datatype_of(sample(datatype)) == datatype


@pytest.mark.parametrize("dtype, expected", [(">f4", "FP32"), (">f8", "FP64"), (">f2", "FP16"), (">i2", "INT16"),
                                             (">i4", "INT32"), (">i8", "INT64"), (">u2", "UINT16"),
                                             (">u4", "UINT32"), (">u8", "UINT64")])
def test_datatype_of_big_endian_arrays(dtype, expected):
    assert datatype_of(np.arange(4).astype(dtype)) == expected


@pytest.mark.parametrize("array", [np.array([b"a", b"bc"]), np.array(["a", "bc"]), bytes_array([b"x", b""])])
def test_datatype_of_strings_is_bytes(array):
    assert datatype_of(array) == "BYTES"


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, "datetime64[s]", "timedelta64[s]"])
def test_datatype_of_unsupported_dtype_raises(dtype):
    with pytest.raises(TensorError, match="no v2 protocol datatype") as info:
        datatype_of(np.zeros(2, dtype=dtype))
    assert str(np.dtype(dtype)) in str(info.value)


# --- raw round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("shape", [(2, 3), (5,), (), (0, 4)])
def test_raw_round_trip_every_numeric_datatype(datatype, shape):
    array = sample(datatype, shape)
    request = build_infer_request("m", {"x": array}, version="2", outputs=["y"], request_id="r1")
    assert request.model_name == "m" and request.model_version == "2" and request.id == "r1"
    assert [o.name for o in request.outputs] == ["y"]
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == list(shape)
    assert len(request.raw_input_contents[0]) == array.size * DATATYPES[datatype].itemsize
    decoded = decode_request_inputs(request)["x"]
    assert decoded.dtype == DATATYPES[datatype]
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_raw_round_trip_several_inputs_keeps_names_and_order():
    inputs = {"a": sample("FP32"), "b": sample("INT64", (4,)), "c": bytes_array([b"q", b""]), "d": sample("BOOL", (3,))}
    decoded = decode_request_inputs(build_infer_request("m", inputs))
    assert list(decoded) == ["a", "b", "c", "d"]
    for name, array in inputs.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_raw_round_trip_big_endian_input_keeps_values():
    array = np.array([[1.5, -2.0], [3.25, 1e30]], dtype=">f4")
    request = build_infer_request("m", {"x": array})
    assert request.raw_input_contents[0] == array.astype("<f4").tobytes()
    decoded = decode_request_inputs(request)["x"]
    assert decoded.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(decoded, array)


def test_raw_round_trip_non_contiguous_input():
    array = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2].T
    assert not array.flags.c_contiguous
    np.testing.assert_array_equal(decode_request_inputs(build_infer_request("m", {"x": array}))["x"], array)


@pytest.mark.parametrize("items, shape", [
    ([b"hello", b"", b"\x00\xff binary", b"x" * 1000], (4,)),
    ([b"", b"", b""], (3,)),
    ([b"a", b"bb", b"", b"dddd", b"e", b""], (2, 3)),
    ([], (0,)),
    ([b"only"], ()),
])
def test_raw_round_trip_bytes_variable_length(items, shape):
    array = bytes_array(items, shape)
    request = build_infer_request("m", {"s": array})
    assert request.inputs[0].datatype == "BYTES"
    expected_raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    assert request.raw_input_contents[0] == expected_raw
    decoded = decode_request_inputs(request)["s"]
    assert decoded.dtype == object and decoded.shape == shape
    assert decoded.reshape(-1).tolist() == items


def test_bytes_from_unicode_and_fixed_width_arrays():
    decoded = decode_request_inputs(build_infer_request("m", {"u": np.array(["héllo", ""]), "s": np.array([b"ab", b"c"])}))
    assert decoded["u"].tolist() == ["héllo".encode(), b""]
    assert decoded["s"].tolist() == [b"ab", b"c"]


def test_serialize_bytes_layout_and_deserialize_inverse():
    raw = serialize_bytes(bytes_array([b"ab", b"", "c"]))
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00c"
    assert deserialize_bytes("s", raw, 3).tolist() == [b"ab", b"", b"c"]


# --- zero copy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "UINT8", "INT64", "FP16", "BOOL"])
def test_raw_decode_is_zero_copy_over_the_request_bytes(datatype):
    request = build_infer_request("m", {"x": sample(datatype, (3, 4))})
    decoded = decode_request_inputs(request)["x"]
    owner = base_object(decoded)
    assert isinstance(owner, bytes), f"decoded array should view the request bytes, its base is {type(owner)}"
    assert owner == request.raw_input_contents[0]
    assert np.shares_memory(decoded, np.frombuffer(owner, dtype=np.uint8))
    assert not decoded.flags.writeable
    assert not decoded.flags.owndata


# --- typed contents ----------------------------------------------------------------------------------------


TYPED_CASES = [
    ("FP32", "fp32_contents", [1.5, -2.25, 0.0, 3.0, 1e-3, 7.0]),
    ("FP64", "fp64_contents", [1.5, -2.25, 0.0, 3.0, 1e-300, 7.0]),
    ("INT8", "int_contents", [-128, 127, 0, 1, -1, 5]),
    ("INT16", "int_contents", [-32768, 32767, 0, 1, -1, 5]),
    ("INT32", "int_contents", [-2**31, 2**31 - 1, 0, 1, -1, 5]),
    ("INT64", "int64_contents", [-2**63, 2**63 - 1, 0, 1, -1, 5]),
    ("UINT8", "uint_contents", [0, 255, 1, 2, 3, 4]),
    ("UINT16", "uint_contents", [0, 65535, 1, 2, 3, 4]),
    ("UINT32", "uint_contents", [0, 2**32 - 1, 1, 2, 3, 4]),
    ("UINT64", "uint64_contents", [0, 2**64 - 1, 1, 2, 3, 4]),
    ("BOOL", "bool_contents", [True, False, True, True, False, False]),
]


@pytest.mark.parametrize("datatype, field, values", TYPED_CASES, ids=[c[0] for c in TYPED_CASES])
def test_typed_contents_decode_to_dtype_and_shape(datatype, field, values):
    assert CONTENTS_FIELDS[datatype] == field
    request = request_with({"name": "x", "datatype": datatype, "shape": [2, 3], "contents": {field: values}})
    decoded = decode_request_inputs(request)["x"]
    assert decoded.dtype == DATATYPES[datatype]
    assert decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded.reshape(-1), np.array(values, dtype=DATATYPES[datatype]))


def test_typed_bytes_contents():
    items = [b"a", b"", b"ccc", b"\x00"]
    request = request_with({"name": "s", "datatype": "BYTES", "shape": [2, 2], "contents": {"bytes_contents": items}})
    decoded = decode_request_inputs(request)["s"]
    assert decoded.dtype == object and decoded.shape == (2, 2)
    assert decoded.reshape(-1).tolist() == items


def test_zero_element_input_without_data_is_empty_array():
    decoded = decode_request_inputs(request_with({"name": "x", "datatype": "FP32", "shape": [0, 3]}))["x"]
    assert decoded.shape == (0, 3) and decoded.dtype == np.float32


@pytest.mark.parametrize("datatype, field, value", [("UINT8", "uint_contents", 300), ("INT8", "int_contents", -200),
                                                    ("UINT16", "uint_contents", 70000),
                                                    ("INT16", "int_contents", 40000)])
def test_typed_values_out_of_range_are_refused(datatype, field, value):
    request = request_with({"name": "x", "datatype": datatype, "shape": [1], "contents": {field: [value]}})
    with pytest.raises(TensorError):
        decode_request_inputs(request)


# --- errors ------------------------------------------------------------------------------------------------


def test_raw_entry_count_differs_from_input_count():
    request = request_with({"name": "a", "datatype": "FP32", "shape": [1]}, {"name": "b", "datatype": "FP32", "shape": [1]},
                           raw=[b"\x00" * 4])
    with pytest.raises(TensorError, match=r"raw_input_contents has 1 entries for 2 inputs.*one entry per input"):
        decode_request_inputs(request)


def test_raw_entries_more_than_inputs():
    request = request_with({"name": "a", "datatype": "FP32", "shape": [1]}, raw=[b"\x00" * 4, b"\x00" * 4])
    with pytest.raises(TensorError, match="2 entries for 1 inputs"):
        decode_request_inputs(request)


@pytest.mark.parametrize("datatype, shape, size", [("FP32", [2, 3], 20), ("INT64", [4], 33), ("FP16", [3], 0),
                                                   ("UINT8", [2, 2], 5)])
def test_raw_byte_count_mismatch_names_both_counts(datatype, shape, size):
    itemsize = DATATYPES[datatype].itemsize
    expected = int(np.prod(shape)) * itemsize
    request = request_with({"name": "img", "datatype": datatype, "shape": shape}, raw=[b"\x01" * size])
    with pytest.raises(TensorError) as info:
        decode_request_inputs(request)
    message = str(info.value)
    assert "'img'" in message
    assert f"{size} bytes" in message and f"{expected} bytes" in message
    assert datatype in message and str(shape) in message


@pytest.mark.parametrize("datatype, field, values", [("FP32", "fp32_contents", [1.0] * 5),
                                                    ("INT32", "int_contents", [1] * 7),
                                                    ("BYTES", "bytes_contents", [b"a"])])
def test_typed_count_mismatch(datatype, field, values):
    request = request_with({"name": "x", "datatype": datatype, "shape": [2, 3], "contents": {field: values}})
    with pytest.raises(TensorError, match=rf"'x': {field} holds {len(values)} values but shape \[2, 3\] needs 6"):
        decode_request_inputs(request)


def test_typed_contents_in_the_wrong_field_as_well():
    request = request_with({"name": "x", "datatype": "INT32", "shape": [2],
                            "contents": {"int_contents": [1, 2], "fp32_contents": [1.0, 2.0]}})
    with pytest.raises(TensorError, match="must use int_contents, not fp32_contents"):
        decode_request_inputs(request)


def test_raw_and_typed_together():
    request = request_with({"name": "x", "datatype": "FP32", "shape": [1], "contents": {"fp32_contents": [1.0]}},
                           raw=[b"\x00" * 4])
    with pytest.raises(TensorError, match="both typed contents and raw_input_contents; send only one"):
        decode_request_inputs(request)


def test_unknown_datatype_lists_the_known_ones():
    request = request_with({"name": "x", "datatype": "FLOAT", "shape": [1]}, raw=[b"\x00" * 4])
    with pytest.raises(TensorError, match="unknown datatype 'FLOAT'") as info:
        decode_request_inputs(request)
    assert "FP32" in str(info.value) and "BYTES" in str(info.value)


@pytest.mark.parametrize("shape", [[-1, 3], [2, -5]])
def test_negative_dims(shape):
    request = request_with({"name": "x", "datatype": "FP32", "shape": shape}, raw=[b"\x00" * 12])
    with pytest.raises(TensorError, match="negative dimension.*concrete shape"):
        decode_request_inputs(request)


def test_duplicate_input_names():
    request = request_with({"name": "x", "datatype": "FP32", "shape": [1]}, {"name": "x", "datatype": "FP32", "shape": [1]},
                           raw=[b"\x00" * 4, b"\x00" * 4])
    with pytest.raises(TensorError, match="'x' is given twice"):
        decode_request_inputs(request)


def test_fp16_has_no_typed_field():
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="h", datatype="FP16", shape=[2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])  # the closest a client could get
    with pytest.raises(TensorError, match="FP16 has no typed contents field; send it in raw_input_contents"):
        decode_request_inputs(request)


def test_bytes_raw_truncated_inside_length_prefix():
    raw = struct.pack("<I", 2) + b"ab" + b"\x05\x00"
    request = request_with({"name": "s", "datatype": "BYTES", "shape": [2]}, raw=[raw])
    with pytest.raises(TensorError, match="end inside a length prefix at byte 6"):
        decode_request_inputs(request)


def test_bytes_raw_truncated_inside_element():
    raw = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 10) + b"xyz"
    request = request_with({"name": "s", "datatype": "BYTES", "shape": [2]}, raw=[raw])
    with pytest.raises(TensorError, match="BYTES element 1 claims 10 bytes but only 3 remain"):
        decode_request_inputs(request)


@pytest.mark.parametrize("items, shape", [([b"a", b"b", b"c"], [2]), ([b"a"], [2, 2]), ([], [1])])
def test_bytes_element_count_mismatch(items, shape):
    raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    request = request_with({"name": "s", "datatype": "BYTES", "shape": shape}, raw=[raw])
    with pytest.raises(TensorError, match=rf"needs {int(np.prod(shape))} BYTES elements, raw contents hold {len(items)}"):
        decode_request_inputs(request)


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "BOOL"])
def test_missing_data(datatype):
    request = request_with({"name": "x", "datatype": datatype, "shape": [2]})
    with pytest.raises(TensorError, match="'x' has no data; set its contents or raw_input_contents"):
        decode_request_inputs(request)


def test_tensor_error_is_a_value_error():
    assert issubclass(TensorError, ValueError)


# --- responses ---------------------------------------------------------------------------------------------


def test_response_round_trip_every_datatype():
    outputs = {f"out_{name}": sample(name, (2, 2)) for name in NUMERIC}
    outputs["text"] = bytes_array([b"cat", b"", b"dog", b"\xff"], (2, 2))
    response = pb.ModelInferResponse(model_name="m")
    encode_response_outputs(response, outputs)
    assert [o.name for o in response.outputs] == list(outputs)
    assert len(response.raw_output_contents) == len(outputs)
    decoded = decode_response_outputs(response)
    assert list(decoded) == list(outputs)
    for name, array in outputs.items():
        assert decoded[name].shape == array.shape
        if name == "text":
            assert decoded[name].tolist() == array.tolist()
        else:
            assert decoded[name].dtype == array.dtype
            np.testing.assert_array_equal(decoded[name], array)


def test_response_round_trip_big_endian_and_non_contiguous_output():
    outputs = {"be": np.arange(6, dtype=">i4").reshape(2, 3), "nc": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]}
    response = pb.ModelInferResponse()
    encode_response_outputs(response, outputs)
    assert response.outputs[0].datatype == "INT32"
    decoded = decode_response_outputs(response)
    np.testing.assert_array_equal(decoded["be"], outputs["be"])
    np.testing.assert_array_equal(decoded["nc"], outputs["nc"])


def test_response_typed_outputs_decode():
    response = pb.ModelInferResponse()
    tensor = response.outputs.add(name="p", datatype="FP32", shape=[1, 3])
    tensor.contents.fp32_contents.extend([0.1, 0.2, 0.7])
    tensor = response.outputs.add(name="label", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"cat")
    decoded = decode_response_outputs(response)
    assert decoded["p"].shape == (1, 3) and decoded["p"].dtype == np.float32
    assert decoded["label"].tolist() == [b"cat"]


def test_response_unsupported_output_dtype_raises():
    with pytest.raises(TensorError, match="complex"):
        encode_response_outputs(pb.ModelInferResponse(), {"z": np.zeros(2, dtype=np.complex64)})


def test_response_raw_count_mismatch_is_a_tensor_error():
    response = pb.ModelInferResponse()
    encode_response_outputs(response, {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    del response.raw_output_contents[1]
    with pytest.raises(TensorError):
        decode_response_outputs(response)

