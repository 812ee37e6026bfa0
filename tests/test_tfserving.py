"""The TF Serving API on kvd: gRPC (PredictionService, ModelService) through tensorflow-serving-api's own stubs,
and REST (/v1/models/...), on the digits model and a small RGB image model, with float and string (encoded
image) inputs; answers compared with Keras's."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import requests

from precision import promised, rel_diff

from kvserve.proto.images import Preprocess, to_input

TF_SERVING_CLIENT = textwrap.dedent("""
    import json, sys
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc, classification_pb2)

    address, model, data_path, out_path = sys.argv[1:5]
    data = np.load(data_path, allow_pickle=False)
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 28)])
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    report = {}
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": model}), timeout=60)
    report["status"] = [{"version": s.version, "state": s.state, "code": s.status.error_code} for s in status.model_version_status]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    metadata = predictions.GetModelMetadata(request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    input_name, output_name = next(iter(signature.inputs)), next(iter(signature.outputs))
    report["signature"] = {"input": input_name, "output": output_name, "dtype": signature.inputs[input_name].dtype,
                           "shape": [d.size for d in signature.inputs[input_name].tensor_shape.dim],
                           "method": signature.method_name, "version": metadata.model_spec.version.value}
    outputs = {}
    for kind in ("floats", "images"):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        if kind == "floats":
            request.model_spec.version.value = 1
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(data["floats"]))
        else:
            request.model_spec.version_label = "latest"
            images = [bytes(b) for b in data["images"]]
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
        response = predictions.Predict(request, timeout=120)
        outputs[kind] = tf.make_ndarray(response.outputs[output_name])
        report[kind + "_spec"] = [response.model_spec.name, response.model_spec.version.value]
    try:
        predictions.Classify(classification_pb2.ClassificationRequest(model_spec={"name": model}), timeout=60)
    except grpc.RpcError as error:
        report["classify"] = error.code().name
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "no-such-model"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(data["floats"]))
    try:
        predictions.Predict(request, timeout=60)
    except grpc.RpcError as error:
        report["unknown"] = error.code().name
    np.savez(out_path, **outputs)
    print(json.dumps(report))
""")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rgb(served_digits, tmp_path_factory):
    """A small RGB CNN (16x16x3, weights=None style random init, seeded), uploaded as 'tiny_rgb' (fp32, unit)."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="scores")(x))
    path = tmp_path_factory.mktemp("rgb") / "tiny_rgb.keras"
    model.save(path)
    with served_digits.client() as client:
        manifest = client.upload(path, name="tiny_rgb", precision="fp32", preprocess="unit")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    pngs = [_png(p) for p in pixels]
    preprocess = Preprocess.from_dict(manifest.get("preprocess"))
    decoded = np.stack([to_input(p, [-1, 16, 16, 3], preprocess) for p in pngs]).astype(np.float32)
    floats = rng.random((2, 16, 16, 3), dtype=np.float32)
    return {"model": model, "pngs": pngs, "decoded": decoded, "floats": floats}


@pytest.fixture(scope="module")
def digit_case(digits):
    import keras

    model = keras.models.load_model(digits.paths["h5"], compile=False)
    x = digits.x_test[:3].astype(np.float32)
    pixels = [(d.reshape(8, 8) * 255 / max(float(d.max()), 1e-6)).astype(np.uint8) for d in x]
    pngs = [_png(p) for p in pixels]
    decoded = np.stack([to_input(p, [-1, 8, 8, 1], Preprocess()) for p in pngs]).astype(np.float32)
    return {"model": model, "pngs": pngs, "decoded": decoded, "floats": x}


def _close_to_keras(served_digits, model: str, served, keras_answer) -> None:
    """Within what kvd promises for the precision that really ran (tests/precision.py), same top class."""
    with served_digits.client() as client:
        manifest = client.describe(model)["manifest"]
    assert rel_diff(np.asarray(served), keras_answer) <= promised(manifest)


def _tf_serving_client(address: str, model: str, case: dict, tmp_path: Path) -> tuple[dict, dict]:
    data_path, out_path = tmp_path / f"{model}-in.npz", tmp_path / f"{model}-out.npz"
    width = max(len(p) for p in case["pngs"])
    np.savez(data_path, floats=case["floats"], images=np.array(case["pngs"], dtype=f"S{width}"))
    result = subprocess.run([sys.executable, "-c", TF_SERVING_CLIENT, address, model, str(data_path), str(out_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(out_path)
    return json.loads(result.stdout.strip().splitlines()[-1]), {k: outputs[k] for k in outputs.files}


@pytest.mark.parametrize("model_name, case_name", [("digits32", "digit_case"), ("tiny_rgb", "rgb")])
def test_tensorflow_serving_api_client_gets_keras_answers(served_digits, tmp_path, request, model_name, case_name):
    case = request.getfixturevalue(case_name)
    report, outputs = _tf_serving_client(served_digits.address, model_name, case, tmp_path)
    assert report["status"] == [{"version": 1, "state": 30, "code": 0}]
    assert report["signature"]["dtype"] == 1 and report["signature"]["shape"][0] == -1
    assert report["signature"]["method"] == "tensorflow/serving/predict" and report["signature"]["version"] == 1
    assert report["floats_spec"] == [model_name, 1] and report["images_spec"] == [model_name, 1]
    assert report["classify"] == "UNIMPLEMENTED" and report["unknown"] == "NOT_FOUND"
    keras_floats = np.asarray(case["model"].predict(case["floats"], verbose=0))
    keras_images = np.asarray(case["model"].predict(case["decoded"], verbose=0))
    _close_to_keras(served_digits, model_name, outputs["floats"], keras_floats)
    _close_to_keras(served_digits, model_name, outputs["images"], keras_images)


# --- REST ------------------------------------------------------------------------------------------------
def test_rest_status_and_metadata(served_digits):
    http = served_digits.http_url
    status = requests.get(f"{http}/v1/models/digits32", timeout=30).json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{http}/v1/models/digits32/versions/1", timeout=30).json() == status
    assert requests.get(f"{http}/v1/models/digits32/labels/latest", timeout=30).json() == status
    metadata = requests.get(f"{http}/v1/models/digits32/metadata", timeout=30).json()
    assert metadata["model_spec"] == {"name": "digits32", "signature_name": "", "version": "1"}
    definition = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    (name, info), = definition["inputs"].items()
    assert info["dtype"] == "DT_FLOAT" and [d["size"] for d in info["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    assert definition["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar_match_keras(served_digits, digit_case):
    http = served_digits.http_url
    x = digit_case["floats"]
    expected = np.asarray(digit_case["model"].predict(x, verbose=0))
    rows = requests.post(f"{http}/v1/models/digits32:predict", json={"instances": x.tolist()}, timeout=60)
    assert rows.status_code == 200, rows.text
    _close_to_keras(served_digits, "digits32", rows.json()["predictions"], expected)
    name = requests.get(f"{http}/v2/models/digits32", timeout=30).json()["inputs"][0]["name"]
    named = requests.post(f"{http}/v1/models/digits32/versions/1:predict", json={"instances": [{name: r} for r in x.tolist()]}, timeout=60)
    _close_to_keras(served_digits, "digits32", named.json()["predictions"], expected)
    columns = requests.post(f"{http}/v1/models/digits32:predict", json={"signature_name": "serving_default", "inputs": {name: x.tolist()}}, timeout=60)
    assert columns.status_code == 200, columns.text
    _close_to_keras(served_digits, "digits32", columns.json()["outputs"], expected)


def test_rest_b64_images_are_decoded_server_side(served_digits, rgb):
    http = served_digits.http_url
    body = {"instances": [{"b64": base64.b64encode(p).decode()} for p in rgb["pngs"]]}
    response = requests.post(f"{http}/v1/models/tiny_rgb:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    expected = np.asarray(rgb["model"].predict(rgb["decoded"], verbose=0))
    _close_to_keras(served_digits, "tiny_rgb", response.json()["predictions"], expected)
    columnar = requests.post(f"{http}/v1/models/tiny_rgb:predict", json={"inputs": {"image": body["instances"]}}, timeout=60)
    _close_to_keras(served_digits, "tiny_rgb", columnar.json()["outputs"], expected)


@pytest.mark.parametrize("method, path, body, status, needle", [
    ("GET", "/v1/models/nope", None, 404, "not found"),
    ("GET", "/v1/models/digits32/versions/7", None, 404, "no version 7"),
    ("GET", "/v1/models/digits32/labels/canary", None, 404, "no version label 'canary'"),
    ("POST", "/v1/models/digits32:predict", b"{oops", 400, "not valid JSON"),
    ("POST", "/v1/models/digits32:predict", {"instances": [[1, 2], [3]]}, 400, "rectangular"),
    ("POST", "/v1/models/digits32:predict", {"instances": [[1.0, 2.0]]}, 400, "shape"),
    ("POST", "/v1/models/digits32:predict", {"instances": [], "inputs": []}, 400, "exactly one"),
    ("POST", "/v1/models/digits32:predict", {"signature_name": "other", "instances": [1]}, 400, "signature 'other' not found"),
    ("POST", "/v1/models/tiny_rgb:predict", {"instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
    ("POST", "/v1/models/tiny_rgb:predict", {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, 400, "image"),
    ("POST", "/v1/models/digits32:classify", {"examples": []}, 501, "not implemented"),
])
def test_rest_errors_are_tf_serving_shaped(served_digits, rgb, method, path, body, status, needle):
    url = served_digits.http_url + path
    if isinstance(body, bytes):
        response = requests.request(method, url, data=body, timeout=60)
    else:
        response = requests.request(method, url, json=body, timeout=60)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and needle in response.json()["error"], response.json()


def test_http_calls_are_in_kvds_metrics(served_digits):
    from opsutil import sample, scrape

    requests.post(f"{served_digits.http_url}/v1/models/digits32:predict", json={"instances": [[1.0]]}, timeout=60)
    requests.post(f"{served_digits.http_url}/v1/models/digits32:predict", json={"instances": [[[[0.0]] * 8] * 8]}, timeout=60)
    samples = scrape(served_digits.metrics_url)
    assert sample(samples, "kvserve_requests_total", method="Predict", model="digits32", code="OK") >= 1
    assert sample(samples, "kvserve_requests_total", method="Predict", model="digits32", code="INVALID_ARGUMENT") >= 1
    assert sample(samples, "kvserve_request_inference_seconds_count", model="digits32") >= 1
