"""The serve path's fast path: ModelInfer bytes decoded without copies, concurrent calls that overlap (no lock,
and OpenVINO releases the GIL), the performance hint per model or per kvd, and a compiled-model cache that a
restart actually finds. Behaviour only: speed is measured by ``make bench``, never here."""

from __future__ import annotations

import signal
import sys
import threading

import grpc
import numpy as np
import pytest
from precision import promised, rel_diff

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto.tensors import TensorError, build_infer_request, decode_request_inputs, decode_response_outputs, encode_response_outputs
from kvserve.proto.wire import InferRequestView, InferResponseView, MalformedInferRequest, parse_infer_request

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


# --- the codec ----------------------------------------------------------------------------------------------
def _request() -> pb.ModelInferRequest:
    inputs = {"image": np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32), "ids": np.arange(5, dtype=np.int64),
              "names": np.array([b"a", b"bc"], dtype=object)}
    request = build_infer_request("digits", inputs, version="3", outputs=["probabilities"], request_id="r-1")
    request.parameters["priority"].int64_param = 7
    request.inputs[0].parameters["note"].string_param = "x"
    return request


def test_raw_inputs_are_views_of_the_received_bytes():
    request = _request()
    wire = request.SerializeToString()
    view = parse_infer_request(wire)
    assert isinstance(view, InferRequestView)
    # everything but the raw contents is the protobuf message itself
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert view._message == expected
    assert [bytes(raw) for raw in view.raw_input_contents] == list(request.raw_input_contents)
    decoded = decode_request_inputs(view)
    reference = decode_request_inputs(request)
    assert decoded.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(decoded[name], reference[name])
    buffer = np.frombuffer(wire, np.uint8)
    assert np.shares_memory(decoded["image"], buffer) and np.shares_memory(decoded["ids"], buffer)  # zero-copy


def test_requests_without_raw_contents_and_unknown_fields_parse_like_protobuf():
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    unknown = b"\x98\x06\x2a" + b"\xa1\x06" + bytes(8) + b"\xad\x06" + bytes(4)  # fields 99 (varint), 100 (fixed64), 101 (fixed32)
    for wire in (typed.SerializeToString(), typed.SerializeToString() + unknown, b""):
        view = parse_infer_request(wire)
        assert isinstance(view, InferRequestView)
        assert view.model_name == pb.ModelInferRequest.FromString(wire).model_name
        np.testing.assert_array_equal(decode_request_inputs(view).get("x", np.empty(0)), [1.0, 2.0] if wire else [])


@pytest.mark.parametrize("wire", [b"\x0a\xff", b"\x3a\x10abc", b"\x0b", b"\x12\x05ab", b"\x80"])
def test_malformed_bytes_raise_a_tensor_error_on_use(wire):
    view = parse_infer_request(wire)
    assert isinstance(view, MalformedInferRequest)
    with pytest.raises(TensorError, match="not a valid ModelInferRequest"):
        decode_request_inputs(view)


def test_response_view_serializes_like_protobuf():
    outputs = {"probabilities": np.random.default_rng(1).random((3, 10), dtype=np.float32), "labels": np.array([b"x", b"yz"], dtype=object)}
    view = InferResponseView(pb.ModelInferResponse(model_name="digits", model_version="1", id="r-1"))
    encode_response_outputs(view, outputs)
    message = pb.ModelInferResponse(model_name="digits", model_version="1", id="r-1")
    encode_response_outputs(message, outputs)
    assert view.raw_output_contents[0] is not None and not isinstance(view.raw_output_contents[0], bytes)  # the array, no copy yet
    parsed = pb.ModelInferResponse.FromString(view.SerializeToString())
    assert parsed == message
    decoded = decode_response_outputs(parsed)
    np.testing.assert_array_equal(decoded["probabilities"], outputs["probabilities"])
    assert list(decoded["labels"]) == [b"x", b"yz"]


def test_served_infer_uses_the_codec(served_digits, digits):
    with grpc.insecure_channel(served_digits.address) as channel:
        infer = channel.unary_unary(MODEL_INFER)  # raw bytes both ways
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\x0a\xff\xff", timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in caught.value.details()
        reply = pb.ModelInferResponse.FromString(infer(build_infer_request("digits", {"image": digits.x_test[:4]}, request_id="q").SerializeToString(), timeout=30))
    assert (reply.model_name, reply.model_version, reply.id) == ("digits", "1", "q")
    probabilities = decode_response_outputs(reply)["probabilities"]
    with served_digits.client() as client:
        manifest = client.describe("digits")["manifest"]
    assert rel_diff(probabilities, digits.keras_probs[:4]) <= promised(manifest)


# --- concurrency --------------------------------------------------------------------------------------------
def test_openvino_releases_the_gil_while_it_computes(served_digits):
    """While one thread is inside OpenVINO's infer, another must be able to run Python.

    Timing-free: with a switch interval of an hour, the interpreter never takes the GIL from a thread; this
    thread can only run again while the inferring thread is inside ``infer`` if OpenVINO released the GIL there.
    Had it kept it, ``done`` would already be set when this thread wakes (it needs the GIL to look).
    """
    from kvserve.plugins.backends.openvino_devices import OpenVINOBackend
    from kvserve.plugins.types import LoadRequest, TensorSpec

    model_dir = served_digits.repository / "digits32" / "1"
    import json

    manifest = json.loads((model_dir / "manifest.json").read_text())
    runner = OpenVINOBackend("CPU").load(LoadRequest(model_dir, manifest, [TensorSpec.from_dict(t) for t in manifest["inputs"]],
                                                     [TensorSpec.from_dict(t) for t in manifest["outputs"]], model_dir / "no-cache"))
    batch = {"image": np.random.default_rng(0).random((2_000, 8, 8, 1), dtype=np.float32)}
    runner.infer({"image": batch["image"][:10]})
    entered, done = threading.Event(), threading.Event()

    def infer() -> None:
        entered.set()
        runner.infer(batch)
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(3600)
    try:
        thread = threading.Thread(target=infer)
        thread.start()
        assert entered.wait(60)
        finished_first = done.is_set()
    finally:
        sys.setswitchinterval(interval)
    thread.join(60)
    runner.close()
    assert not finished_first, "this thread could not run until the inference was over: OpenVINO kept the GIL"


class _MeetingRunner:
    """Answers only when two calls are inside ``infer`` at the same time (or fails after the timeout)."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)

    def infer(self, inputs, outputs=None):
        self.barrier.wait()
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        pass


def test_concurrent_infer_calls_run_at_the_same_time(tmp_path):
    """Nothing between the gRPC port and the runner serializes calls: two requests meet inside the runner."""
    from kvserve.client import Client
    from kvserve.plugins.types import TensorSpec
    from kvserve.server.app import build, start
    from kvserve.server.models.manager import READY, ModelVersion
    from kvserve.server.settings import Settings

    daemon = build(Settings(repository=tmp_path / "repo", address="127.0.0.1:0"))
    start(daemon)
    try:
        daemon.manager.install(ModelVersion("pair", 1, {}, READY, "test runner", "TEST", _MeetingRunner(),
                                            inputs=[TensorSpec("x", "FP32", (-1, 2))], outputs=[TensorSpec("y", "FP32", (-1, 2))]))
        results: dict[int, np.ndarray] = {}

        def call(index: int) -> None:
            with Client(f"127.0.0.1:{daemon.port}", timeout=60) as client:
                results[index] = client.infer("pair", {"x": np.full((1, 2), index, np.float32)})["y"]

        threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert {i: r.tolist() for i, r in results.items()} == {1: [[2.0, 2.0]], 2: [[4.0, 4.0]]}
    finally:
        daemon.stop(0)


# --- performance hint ---------------------------------------------------------------------------------------
def test_performance_hint_precedence(tmp_path):
    from kvserve.plugins.manager import load_plugins
    from kvserve.server.main import parse_args
    from kvserve.server.models.manager import ModelManager
    from kvserve.server.models.repository import Repository

    settings, _ = parse_args(["--repository", str(tmp_path), "--performance-hint", "latency"])
    assert settings.performance_hint == "LATENCY"
    manager = ModelManager(Repository(tmp_path), load_plugins(), settings)
    assert manager.runtime_config({}) == {"PERFORMANCE_HINT": "LATENCY"}
    assert manager.runtime_config({"performance_hint": "THROUGHPUT"}) == {"PERFORMANCE_HINT": "THROUGHPUT"}
    settings.performance_hint = ""
    assert manager.runtime_config({}) == {}  # the backend's own default


def test_latency_hint_per_model(served_digits, digits):
    from kvserve.plugins.backends.openvino_devices import OpenVINOBackend
    from kvserve.plugins.types import LoadRequest, TensorSpec

    with served_digits.client(timeout=120) as client:
        manifest = client.upload(digits.paths["h5"], name="digits-latency", performance_hint="latency")
        assert manifest["performance_hint"] == "LATENCY"
        assert client.infer("digits-latency", digits.x_test[:2])["probabilities"].shape == (2, 10)
        with pytest.raises(grpc.RpcError) as caught:
            client.upload(digits.paths["h5"], name="digits-fastest", performance_hint="fastest")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown performance hint" in caught.value.details()
    model_dir = served_digits.repository / "digits-latency" / "1"
    specs = [TensorSpec.from_dict(t) for t in manifest["inputs"]], [TensorSpec.from_dict(t) for t in manifest["outputs"]]
    backend = OpenVINOBackend("CPU")
    latency = backend.load(LoadRequest(model_dir, manifest, *specs, model_dir / "no-cache", config={"PERFORMANCE_HINT": "LATENCY"}))
    throughput = backend.load(LoadRequest(model_dir, manifest, *specs, model_dir / "no-cache"))
    assert str(latency.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY" and latency.nireq == 1
    assert str(throughput.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert throughput.nireq == int(throughput.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    latency.close()
    throughput.close()


# --- compiled-model cache -----------------------------------------------------------------------------------
def test_restart_finds_the_blob_compiled_at_upload(kvd_factory, digits, tmp_path):
    repository = tmp_path / "repo"
    kvd = kvd_factory(repository)
    with kvd.client() as client:
        client.upload(digits.paths["h5"], name="digits")
    blobs = sorted(p.relative_to(repository / ".cache").as_posix() for p in (repository / ".cache").rglob("*") if p.is_file())
    assert len(blobs) == 1 and blobs[0].startswith("digits/1/")  # the version's own cache: deleted with it
    kvd.stop(signal.SIGTERM)
    kvd = kvd_factory(repository)
    with kvd.client() as client:
        assert client.model_ready("digits")
    # the blob made while the upload loaded in staging was found after the rename: nothing new was compiled
    assert sorted(p.relative_to(repository / ".cache").as_posix() for p in (repository / ".cache").rglob("*") if p.is_file()) == blobs
