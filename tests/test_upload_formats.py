"""A Keras model uploaded as .h5, .keras and a zipped SavedModel is served and answers like Keras.

Served answers are held to what kvd promises for the precision that really ran (tests/precision.py: the
upload's weights and the execution precision its parity check recorded), against Keras in this process on the
held-out set. Top-1 must match Keras's accuracy within 1%.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from opsutil import converter_children
from precision import promised, rel_diff


def tensorflow_loaded(pid: int) -> bool:
    """Whether the process has TensorFlow's own libraries mapped (OpenVINO's TF *frontend* does not count)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "/site-packages/tensorflow/" in maps or "libtensorflow_framework" in maps


@pytest.mark.parametrize(("fmt", "precision"), [("h5", "fp16"), ("keras", "fp16"), ("savedmodel_zip", "fp16"), ("keras", "fp32")])
def test_each_format_is_served_and_agrees_with_keras(kvd_factory, digits, fmt, precision, tmp_path):
    kvd = kvd_factory(tmp_path / f"repo-{fmt}-{precision}")
    with kvd.client() as client:
        stages = []
        manifest = client.upload(digits.paths[fmt], name="digits", precision=precision, progress=lambda e: stages.append(e.stage))
        assert stages[-1] == "READY" and {"RECEIVED", "CONVERTING", "VERIFYING", "LOADING"} <= set(stages)
        assert manifest["precision"] == precision and manifest["ir"]["xml"] == "model.xml"
        assert manifest["parity"]["passed"] and manifest["parity"]["top1_agreement"] == 1.0
        probs = client.infer("digits", digits.x_test)["probabilities"] if fmt != "savedmodel_zip" else next(iter(client.infer("digits", digits.x_test).values()))
    assert probs.shape == digits.keras_probs.shape
    execution = manifest["parity"]["execution_precision"]
    assert execution in ("f32", "bf16", "f16") and (precision != "fp32" or execution == "f32")
    assert rel_diff(probs, digits.keras_probs) <= promised(manifest)
    accuracy = float(np.mean(probs.argmax(1) == digits.y_test))
    assert abs(accuracy - digits.keras_accuracy) <= 0.01 and accuracy > 0.9
    version_dir = kvd.repository / "digits" / "1"
    stored = json.loads((version_dir / "manifest.json").read_text())
    assert stored["source"]["sha256"] == manifest["source"]["sha256"]
    assert (version_dir / "model.xml").is_file() and (version_dir / "model.bin").is_file()
    assert not tensorflow_loaded(kvd.process.pid), "kvd's serving process loaded TensorFlow for a conversion"


def test_savedmodel_directory_is_packed_by_the_client(kvd_factory, digits):
    kvd = kvd_factory()
    with kvd.client() as client:
        manifest = client.upload(digits.paths["savedmodel_dir"], name="sm")
        assert manifest["source"]["format"] == "savedmodel"
        out = client.infer("sm", digits.x_test[:4])
    assert np.argmax(next(iter(out.values())), 1).tolist() == digits.keras_probs[:4].argmax(1).tolist()


def test_versions_count_up_and_selection_works(served_digits, digits):
    with served_digits.client() as client:
        manifest = client.upload(digits.paths["keras"], name="versioned")
        again = client.upload(digits.paths["h5"], name="versioned", precision="fp32")
        assert (manifest["version"], again["version"]) == ("1", "2")
        assert client.metadata("versioned")["versions"] == ["1", "2"]
        latest = client.infer("versioned", digits.x_test[:2])
        first = client.infer("versioned", digits.x_test[:2], version="1")
        assert client.describe("versioned")["version"] == "2"
    assert rel_diff(first["probabilities"], latest["probabilities"]) <= promised(manifest) + promised(again)


def test_requested_outputs_and_request_id(served_digits, digits):
    from kvserve.proto.tensors import build_infer_request

    with served_digits.client() as client:
        request = build_infer_request("digits", {"image": digits.x_test[:3]}, outputs=["probabilities"], request_id="req-42")
        response = client.inference.ModelInfer(request)
    assert response.id == "req-42" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["probabilities"] and list(response.outputs[0].shape) == [3, 10]


def test_typed_contents_are_accepted(served_digits, digits):
    from kvserve.proto import grpc_service_pb2 as pb
    from kvserve.proto.tensors import decode_response_outputs

    x = digits.x_test[:2]
    request = pb.ModelInferRequest(model_name="digits32")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with served_digits.client() as client:
        typed = decode_response_outputs(client.inference.ModelInfer(request))["probabilities"]
        raw = client.infer("digits32", x)["probabilities"]
    np.testing.assert_allclose(typed, raw, atol=1e-7)


def test_a_converter_waits_warm_unless_disabled(kvd_factory, digits, tmp_path):
    warm = kvd_factory(tmp_path / "warm")
    cold = kvd_factory(tmp_path / "cold", "--no-warm-converter")
    deadline = time.monotonic() + 30
    while not converter_children(warm.repository) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(converter_children(warm.repository)) == 1
    assert converter_children(cold.repository) == []
    with cold.client() as client:
        assert client.upload(digits.paths["h5"], name="cold")["parity"]["passed"]
    assert converter_children(cold.repository) == []
    assert warm.stop() == 0
    assert converter_children(warm.repository) == []
