"""InceptionV3 end to end (the model of the tutorial kvserve grew from): kvctl upload, describe, infer on a
.npy and a JPEG, the Python client against Keras, and a 17 MB batch through the message size limits.

The model is ``keras.applications.InceptionV3(weights=None)`` with a fixed seed (nothing is downloaded), built
and saved as .h5 once, uploaded once (conversion takes ~30-60 s on two cores) to one kvd for the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import Kvd, start_kvd

pytestmark = pytest.mark.slow

KVCTL = str(Path(sys.executable).parent / "kvctl")
SIDE = 299
CLASSES = 1000
TOP = 3


def kvctl(address: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # A wide console, so rich does not wrap the table cells the tests look for.
    return subprocess.run([KVCTL, "--server", address, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def images(count: int, seed: int, scales: np.ndarray | None = None) -> np.ndarray:
    """NHWC float32 noise, uniform in [-scale, scale] per image (default 1: InceptionV3's preprocessed range)."""
    rng = np.random.default_rng(seed)
    scales = np.ones(count) if scales is None else scales
    return np.stack([rng.uniform(-s, s, size=(SIDE, SIDE, 3)) for s in scales]).astype(np.float32)


def assert_agrees_with_keras(served: np.ndarray, reference: np.ndarray) -> None:
    """Served softmax vs Keras's, row by row.

    With random weights InceptionV3's softmax is nearly flat: every probability is 1/1000 give or take ~1e-5
    for inputs in [-1, 1], so "max abs diff < 1e-2" alone would pass for a server answering a constant 1/1000.
    Hence also: each row's error is small next to that row's own spread (max - min) in Keras, i.e. the served
    output reproduces the structure of the Keras output (measured on this machine: diff/spread 3e-4 to 1e-3 with fp16 weights),
    and rows come back in order (the inputs below give rows with very different spreads).
    """
    assert served.shape == reference.shape
    diff = np.abs(served.astype(np.float64) - reference)
    assert float(diff.max()) < 1e-2, f"max abs diff from Keras {diff.max():.3g}"
    assert (served.argmax(1) == reference.argmax(1)).all(), (served.argmax(1), reference.argmax(1))
    spread = reference.max(1) - reference.min(1)
    ratio = diff.max(1) / spread
    assert (ratio < 0.05).all(), f"per-row max abs diff / Keras spread: {ratio}"


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory):
    """(Keras model, path of its .h5): random weights from a fixed seed."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(weights=None)
    path = tmp_path_factory.mktemp("inception") / "inception_v3.h5"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def inception_kvd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kvd]:
    kvd = start_kvd(tmp_path_factory.mktemp("inception_served") / "repo")
    try:
        yield kvd
    finally:
        kvd.kill()


@pytest.fixture(scope="module")
def uploaded(inception, inception_kvd: Kvd) -> subprocess.CompletedProcess[str]:
    """The one upload, through the CLI; every test below needs it to have worked."""
    _, path = inception
    done = kvctl(inception_kvd.address, "upload", str(path), "--name", "inception")
    assert done.returncode == 0, f"kvctl upload failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{inception_kvd.log()[-5000:]}"
    return done


def keras_predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype=np.float64)


def test_kvctl_upload_and_describe(uploaded, inception, inception_kvd: Kvd):
    model, _ = inception
    assert "ready" in uploaded.stdout and "inception" in uploaded.stdout, uploaded.stdout

    described = kvctl(inception_kvd.address, "describe", "inception", "--json")
    assert described.returncode == 0, described.stderr
    info = json.loads(described.stdout)
    assert info["name"] == "inception"
    assert info["state"] == "READY"
    manifest = info["manifest"]
    assert [(t["datatype"], t["shape"]) for t in manifest["inputs"]] == [("FP32", [-1, SIDE, SIDE, 3])]
    assert [(t["datatype"], t["shape"]) for t in manifest["outputs"]] == [("FP32", [-1, CLASSES])]
    # Keras's own names are kept (not OpenVINO's `args:0`).
    assert manifest["inputs"][0]["name"] == model.layers[0].name
    assert manifest["outputs"][0]["name"] == model.layers[-1].name == "predictions"
    assert manifest["precision"] == "fp16"
    # the Keras application is recognised and its preprocessing suggested
    assert manifest["preprocess"]["mode"] == "inception" and "suggested" in manifest["preprocess"]["source"]
    parity = manifest["parity"]
    assert parity["passed"] is True, parity
    assert parity["max_rel_diff"] <= parity["tolerance_max_rel_diff"]
    assert parity["top1_agreement"] is not None

    table = kvctl(inception_kvd.address, "describe", "inception")
    assert table.returncode == 0, table.stderr
    assert f"FP32 [-1, {SIDE}, {SIDE}, 3]" in table.stdout, table.stdout
    parity_rows = [line for line in table.stdout.splitlines() if " parity " in line]
    assert len(parity_rows) == 1, table.stdout
    assert "passed" in parity_rows[0] and not re.search(r"passed\W+False|FAIL", parity_rows[0], re.IGNORECASE), parity_rows[0]

    with inception_kvd.client() as client:
        assert client.model_ready("inception")
        meta = client.metadata("inception")
    assert meta["inputs"] == [{"name": manifest["inputs"][0]["name"], "datatype": "FP32", "shape": [-1, SIDE, SIDE, 3]}]


def check_infer_json(data: Any, expected_inputs: list[str], top: int) -> None:
    """The schema of `kvctl infer --json`."""
    assert set(data) == {"model", "version", "results", "failed"} and data["failed"] == []
    assert data["model"] == "inception"
    assert isinstance(data["version"], str) and data["version"] == "1"
    assert isinstance(data["results"], list)
    assert [r["input"] for r in data["results"]] == expected_inputs
    for result in data["results"]:
        assert set(result) == {"input", "top"}
        assert isinstance(result["input"], str)
        assert isinstance(result["top"], list) and len(result["top"]) == top
        for entry in result["top"]:
            assert set(entry) == {"index", "score", "label"}
            assert type(entry["index"]) is int and 0 <= entry["index"] < CLASSES
            assert type(entry["score"]) is float and 0.0 <= entry["score"] <= 1.0
            assert entry["label"] is None
        scores = [entry["score"] for entry in result["top"]]
        assert scores == sorted(scores, reverse=True)
        assert len({entry["index"] for entry in result["top"]}) == top


def test_kvctl_infer_npy_and_jpeg(uploaded, inception_kvd: Kvd, tmp_path: Path):
    from PIL import Image

    x = images(1, seed=1)[0]
    npy = tmp_path / "tensor.npy"
    np.save(npy, x)
    jpeg = tmp_path / "noise.jpg"  # not 299x299: kvctl resizes
    Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(240, 320, 3), dtype=np.uint8), mode="RGB").save(jpeg, quality=90)

    done = kvctl(inception_kvd.address, "infer", "-m", "inception", "--top", str(TOP), "--json", str(npy), str(jpeg))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    data = json.loads(done.stdout)
    check_infer_json(data, [str(npy), str(jpeg)], TOP)

    # The .npy row is what the Python client gets for the same tensor.
    with inception_kvd.client() as client:
        output = client.metadata("inception")["outputs"][0]["name"]
        probs = client.infer("inception", x[None])[output][0]
    expected = np.argsort(-probs, kind="stable")[:TOP]
    npy_top = data["results"][0]["top"]
    assert [e["index"] for e in npy_top] == [int(i) for i in expected]
    np.testing.assert_allclose([e["score"] for e in npy_top], probs[expected], rtol=0, atol=1e-6)

    # Default --top is 5, one input alone.
    single = kvctl(inception_kvd.address, "infer", "-m", "inception", "--json", str(jpeg))
    assert single.returncode == 0, single.stderr
    check_infer_json(json.loads(single.stdout), [str(jpeg)], 5)


def test_client_batch_of_two_agrees_with_keras(uploaded, inception, inception_kvd: Kvd):
    model, _ = inception
    # One image in InceptionV3's preprocessed range [-1, 1], one of raw 0-255 pixels: Keras ranks different
    # classes first for them (8 and 513 with this seed), so a swap of rows would show.
    x = np.concatenate([images(1, seed=3), np.random.default_rng(3).uniform(0, 255, size=(1, SIDE, SIDE, 3)).astype(np.float32)])
    with inception_kvd.client() as client:
        outputs = client.infer("inception", x)
    assert list(outputs) == ["predictions"]
    served = outputs["predictions"]
    assert served.dtype == np.float32
    assert served.shape == (2, CLASSES)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-3)
    assert (served >= 0).all()
    reference = keras_predict(model, x)
    assert reference[0].argmax() != reference[1].argmax()  # the premise above
    assert_agrees_with_keras(served, reference)


def test_client_batch_of_sixteen_through_message_limits(uploaded, inception, inception_kvd: Kvd):
    model, _ = inception
    # Amplitudes from 1 to 1000: each row's softmax spread differs from its neighbours' by ~1.6x, so a
    # reordered, truncated or garbled batch fails the per-row comparison with Keras.
    x = images(16, seed=4, scales=np.logspace(0, 3, 16))
    assert x.nbytes > 16 * 1024 * 1024  # 17 MB, far above gRPC's default 4 MB
    with inception_kvd.client(timeout=300) as client:
        served = client.infer("inception", x)["predictions"]
    assert served.shape == (16, CLASSES)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-3)
    assert_agrees_with_keras(served, keras_predict(model, x))
