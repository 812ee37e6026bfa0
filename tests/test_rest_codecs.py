"""The codecs of the HTTP and TF Serving doors, without a server: what they accept, what they refuse, and that
nothing a client declares makes them allocate more than it sent."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from kvserve.plugins.types import TensorSpec
from kvserve.proto import tensorflow_tensor_pb2 as tf
from kvserve.proto.tensors import TensorError
from kvserve.proto.tf_tensors import from_numpy, to_numpy
from kvserve.server.api.rest.errors import HttpError
from kvserve.server.api.rest.tfserving_codec import decode_predict, encode_predict
from kvserve.server.api.rest.v2_codec import decode_infer, encode_infer, split_body


def _tensor(dtype: str, shape: list[int], **fields) -> tf.TensorProto:
    proto = tf.TensorProto(dtype=tf.DataType.Value(dtype), **fields)
    for dim in shape:
        proto.tensor_shape.dim.add(size=dim)
    return proto


def test_tensor_proto_round_trips_and_typed_fields():
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int64), np.array([True, False]),
                  np.arange(3, dtype=np.float16), np.array([b"a", b"\xff"], dtype=object)):
        back = to_numpy("x", from_numpy(array))
        assert back.dtype == array.dtype and back.shape == array.shape and (back == array).all()
    assert to_numpy("x", _tensor("DT_FLOAT", [2, 2], float_val=[1.5])).tolist() == [[1.5, 1.5], [1.5, 1.5]]
    assert to_numpy("x", _tensor("DT_UINT8", [3], int_val=[1, 2, 255])).dtype == np.uint8
    half = to_numpy("x", _tensor("DT_HALF", [2], half_val=list(np.array([0.5, 2.0], np.float16).view(np.uint16))))
    assert half.tolist() == [0.5, 2.0]
    assert to_numpy("s", _tensor("DT_STRING", [2], string_val=[b"p", b"q"])).tolist() == [b"p", b"q"]


@pytest.mark.parametrize("proto, needle", [
    (_tensor("DT_FLOAT", [3], float_val=[1.0, 2.0]), "holds 2 values"),
    (_tensor("DT_FLOAT", [2], tensor_content=b"\0" * 7), "tensor_content is 7 bytes"),
    (_tensor("DT_UINT8", [1], int_val=[300]), "outside the DT_UINT8 range"),
    (_tensor("DT_COMPLEX64", [1]), "not supported"),
    (_tensor("DT_FLOAT", [-1], float_val=[1.0]), "negative dimension"),
    (_tensor("DT_FLOAT", [1 << 40], float_val=[1.0]), "repeat one value"),
    (_tensor("DT_STRING", [1 << 40], string_val=[b"x"]), "repeat one value"),
])
def test_tensor_proto_errors(proto, needle):
    with pytest.raises(TensorError, match=needle):
        to_numpy("x", proto)


def test_v2_binary_and_json_inputs_and_binary_outputs():
    floats = np.arange(4, dtype=np.float32)
    words = struct.pack("<I", 2) + b"hi"
    header = {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
                         {"name": "b", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(words)}},
                         {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["x", {"b64": base64.b64encode(b"\0").decode()}]},
                         {"name": "d", "shape": [1, 2], "datatype": "INT32", "data": [[7, 8]]}],
              "outputs": [{"name": "o", "parameters": {"binary_data": True, "classification": 2}}]}
    head = json.dumps(header).encode()
    parsed, binary = split_body(head + floats.tobytes() + words, str(len(head)))
    request = decode_infer(parsed, binary)
    assert request.inputs["a"].tolist() == [[0, 1], [2, 3]] and request.inputs["b"].tolist() == [b"hi"]
    assert request.inputs["c"].tolist() == [b"x", b"\0"] and request.inputs["d"].dtype == np.int32
    assert request.requested == ["o"] and request.classification == {"o": 2} and request.binary_outputs == {"o"}
    body, length = encode_infer("m", "1", "", {"o": floats, "p": np.array([b"z"], dtype=object)}, {"o"})
    answer = json.loads(body[:length])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 16 and answer["outputs"][1]["data"] == ["z"]
    assert np.frombuffer(body[length:], np.float32).tolist() == floats.tolist()


@pytest.mark.parametrize("header, binary, needle", [
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, b"\0" * 8, "needs 4 bytes"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}, b"\0" * 6, "2 binary bytes"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": -1}}]}, b"", "runs past"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "4"}}]}, b"\0" * 4, "integer"),
    ({"inputs": [{"name": "a", "shape": [1 << 40], "datatype": "FP32", "data": [1]}]}, b"", "needs 1099511627776"),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}, struct.pack("<I", 99), "claims 99"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["%%"], "parameters": {"content_type": "base64"}}]}, b"", "base64"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "data": [1000]}]}, b"", "does not fit INT8"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}, b"", "twice"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}, b"", "no \"data\""),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": ["FP32"], "data": [1]}]}, b"", "unknown datatype"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"top_k": True}}, b"", "integer"),
])
def test_v2_decode_errors(header, binary, needle):
    with pytest.raises(HttpError, match=needle):
        decode_infer(header, memoryview(binary))


def test_tf_serving_row_and_columnar():
    specs = [TensorSpec("x", "FP32", [-1, 2])]
    inputs, rows = decode_predict({"instances": [[1, 2], [3, 4]]}, specs)
    assert rows and inputs["x"].dtype == np.float32 and inputs["x"].shape == (2, 2)
    inputs, rows = decode_predict({"inputs": {"x": [[1, 2]]}}, specs)
    assert not rows and inputs["x"].shape == (1, 2)
    images, _ = decode_predict({"instances": [{"b64": base64.b64encode(b"png").decode()}]}, [TensorSpec("img", "FP32", [-1, 4, 4, 3])])
    assert images["img"].tolist() == [b"png"]
    two = [TensorSpec("a", "FP32", [-1]), TensorSpec("b", "BYTES", [-1])]
    named, _ = decode_predict({"instances": [{"a": 1, "b": "s"}, {"a": 2, "b": "t"}]}, two)
    assert named["a"].tolist() == [1, 2] and named["b"].tolist() == [b"s", b"t"]
    outputs = {"p": np.array([[0.5], [0.25]], np.float32), "q": np.array([b"ok", b"\xff"], dtype=object)}
    assert encode_predict(outputs, True) == {"predictions": [{"p": outputs["p"][0], "q": "ok"}, {"p": outputs["p"][1], "q": {"b64": "/w=="}}]}
    assert encode_predict({"p": outputs["p"]}, False)["outputs"] is outputs["p"]


@pytest.mark.parametrize("body, needle", [
    ({"instances": [[1, 2], [3]]}, "rectangular"),
    ({"instances": []}, "non-empty"),
    ({}, "exactly one"),
    ([1], "JSON object"),
    ({"instances": [1, "a"]}, "must be numbers"),
    ({"instances": ["a", 1]}, "mixes strings"),
    ({"inputs": [1, 2]}, None),
])
def test_tf_serving_decode_errors(body, needle):
    two = [TensorSpec("a", "FP32", [-1]), TensorSpec("b", "FP32", [-1])]
    specs = [TensorSpec("x", "FP32", [-1, 2])]
    if needle is None:
        with pytest.raises(HttpError, match="has 2 inputs"):
            decode_predict(body, two)
        return
    with pytest.raises(HttpError, match=needle):
        decode_predict(body, specs)


def test_json_with_nan_and_infinity_is_accepted_like_triton():
    from kvserve.server.api.rest.v2_codec import parse_json

    request = decode_infer(parse_json(b'{"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [NaN, Infinity, -Infinity]}]}'),
                           memoryview(b""))
    values = request.inputs["a"]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf
    with pytest.raises(HttpError, match="not valid JSON"):
        parse_json(b'{"a": nan}')
    with pytest.raises(HttpError, match="not valid JSON"):
        parse_json(b"[" * 100000)
