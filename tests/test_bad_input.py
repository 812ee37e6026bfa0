"""Bad input gets the right status and a message that says what to do; kvd keeps serving; nothing outside the
repository is touched."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import kvserve_service_pb2 as kv
from kvserve.proto.tensors import build_infer_request


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.fixture
def client(served_digits):
    with served_digits.client() as c:
        yield c
    # after every bad request the daemon still serves
    with served_digits.client() as c:
        assert c.live() and c.model_ready("digits")
    assert served_digits.process.poll() is None


X = np.zeros((2, 8, 8, 1), np.float32)


def test_unknown_model_lists_the_available_ones(client):
    code, message = _status(lambda: client.infer("nope", X))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "model 'nope' not found" in message and "digits" in message


def test_unknown_version(client):
    code, message = _status(lambda: client.infer("digits", X, version="7"))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 7" in message and "versions: 1" in message
    code, message = _status(lambda: client.infer("digits", X, version="latest"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "positive integers" in message


def test_unknown_input_name(client):
    code, message = _status(lambda: client.infer("digits", {"pixels": X}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no input 'pixels'" in message and "'image' (FP32 [-1, 8, 8, 1])" in message


def test_missing_input(client):
    request = pb.ModelInferRequest(model_name="digits")
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input 'image' is missing" in message


def test_wrong_shape(client):
    code, message = _status(lambda: client.infer("digits", np.zeros((2, 8, 8), np.float32)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape [2, 8, 8]" in message and "expects [-1, 8, 8, 1]" in message
    code, message = _status(lambda: client.infer("digits", np.zeros((1, 9, 8, 1), np.float32)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expects [-1, 8, 8, 1]" in message


def test_wrong_dtype(client):
    """Sent as FP64 on the wire (kvserve.client would convert it to the model's dtype first)."""
    request = build_infer_request("digits", {"image": X.astype(np.float64)})
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be FP32, got FP64" in message


def test_wrong_byte_count(client):
    request = build_infer_request("digits", {"image": X})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "508 bytes" in message and "needs 512 bytes" in message


def test_raw_and_typed_contents_together(client):
    request = build_infer_request("digits", {"image": X})
    request.inputs[0].contents.fp32_contents.extend([0.0] * X.size)
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "both typed contents and raw_input_contents" in message


def test_typed_count_mismatch_and_unknown_datatype(client):
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
    tensor.contents.fp32_contents.extend([0.0] * 10)
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds 10 values" in message and "needs 64" in message
    request.inputs[0].datatype = "FLOAT"
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown datatype 'FLOAT'" in message


def test_unknown_requested_output(client):
    code, message = _status(lambda: client.infer("digits", X, outputs=["logits"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no output 'logits'" in message and "probabilities" in message


def test_negative_dimension(client):
    request = build_infer_request("digits", {"image": X})
    request.inputs[0].shape[0] = -1
    code, message = _status(lambda: client.inference.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative dimension" in message


def _upload_bytes(client, name: str, filename: str, data: bytes, timeout: float = 120):
    def requests():
        yield kv.UploadRequest(header=kv.UploadHeader(name=name, filename=filename, size=len(data)))
        yield kv.UploadRequest(chunk=data)

    return list(client.kvserve.Upload(requests(), timeout=timeout))


def _repository_snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if ".cache" not in p.parts}


def test_garbage_upload_is_refused(client, served_digits):
    before = _repository_snapshot(served_digits.repository)
    code, message = _status(lambda: _upload_bytes(client, "garbage", "model.h5", os.urandom(4096)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a model kvserve can read" in message and ".h5" in message
    assert _repository_snapshot(served_digits.repository) == before


def test_truncated_h5_is_refused(client, served_digits, digits):
    data = digits.paths["h5"].read_bytes()
    before = _repository_snapshot(served_digits.repository)
    code, message = _status(lambda: _upload_bytes(client, "truncated", "digits.h5", data[: len(data) // 2]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert "could not" in message and "complete" in message
    assert _repository_snapshot(served_digits.repository) == before
    assert not any((served_digits.repository / ".staging").iterdir())


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "x" * 65, "a\\b", "/etc/x"])
def test_unsafe_names_are_refused_before_any_write(client, served_digits, digits, name):
    outside = served_digits.repository.parent
    before_outside = {p.name for p in outside.iterdir()}
    before = _repository_snapshot(served_digits.repository)
    code, message = _status(lambda: client.upload(digits.paths["h5"], name=name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid model name" in message
    assert _repository_snapshot(served_digits.repository) == before
    assert {p.name for p in outside.iterdir()} == before_outside


@pytest.mark.parametrize("target", ["../x", "a/b"])
def test_unsafe_names_in_delete_and_describe(client, target):
    code, message = _status(lambda: client.delete(target))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid model name" in message
    code, _ = _status(lambda: client.describe(target))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_empty_name_in_header(client):
    code, message = _status(lambda: _upload_bytes(client, "", "m.h5", b"\x89HDF"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid model name ''" in message


def test_upload_without_header_and_empty_upload(client):
    code, message = _status(lambda: list(client.kvserve.Upload(iter([kv.UploadRequest(chunk=b"abc")]))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "starts with a header" in message
    code, message = _status(lambda: _upload_bytes(client, "empty", "m.h5", b""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in message


def test_cut_stream_and_bad_precision_and_device(client, digits):
    data = digits.paths["h5"].read_bytes()

    def short():
        yield kv.UploadRequest(header=kv.UploadHeader(name="short", filename="m.h5", size=len(data) + 10))
        yield kv.UploadRequest(chunk=data)

    code, message = _status(lambda: list(client.kvserve.Upload(short())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "was cut" in message
    code, message = _status(lambda: client.upload(digits.paths["h5"], name="p", precision="fp8"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown precision 'fp8'" in message
    code, message = _status(lambda: client.upload(digits.paths["h5"], name="d", devices=["TPU"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown device TPU" in message and "CPU" in message


def test_lambda_layer_is_refused_without_opt_in(client, tmp_path):
    import keras

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    path = tmp_path / "lambda.h5"
    model.save(path)
    code, message = _status(lambda: client.upload(path, name="lambda"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "Lambda" in message and "--allow-unsafe-deserialization" in message


def test_unimplemented_rpcs_say_so(client):
    code, _ = _status(lambda: client.inference.ModelStatistics(pb.ModelStatisticsRequest(name="digits")))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_empty_batch_and_oversized_batch(client):
    code, message = _status(lambda: client.infer("digits", np.zeros((0, 8, 8, 1), np.float32)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is empty" in message
    code, message = _status(lambda: client.infer("digits", np.zeros((1025, 8, 8, 1), np.float32)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds this server's max batch size 1024" in message
