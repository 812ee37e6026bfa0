"""INT8 uploads: NNCF quantization calibrated on a .npy or an image folder, or loudly on synthetic data; the parity
report judges INT8 on the calibration set and records top-1 agreement; the model serves like the original."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from kvserve.server.uploads.parity import tolerance_for

KVCTL = Path(sys.executable).with_name("kvctl")


def test_int8_upload_calibrated_on_npy_serves_like_keras(served_digits, digits, tmp_path):
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, digits.x_test[:200])
    stages = []
    with served_digits.client(timeout=120) as client:
        manifest = client.upload(digits.paths["h5"], name="digits-int8", precision="int8", calibration=calibration,
                                 progress=lambda e: stages.append((e.stage, e.message)))
        probabilities = client.infer("digits-int8", digits.x_test)["probabilities"]
    assert manifest["precision"] == "int8" and manifest["warnings"] == []
    quantization = manifest["quantization"]
    assert quantization["tool"].startswith("nncf ") and quantization["calibration_samples"] == 200
    assert quantization["synthetic_calibration"] is False and "(.npy, 200)" in quantization["calibration"]
    parity = manifest["parity"]
    assert parity["passed"] and parity["samples"] == 200 and "calibration set" in parity["inputs"]
    assert parity["tolerance_max_rel_diff"] == tolerance_for("int8", parity["execution_precision"])
    assert parity["top1_agreement"] >= 0.95
    assert ("QUANTIZING", "NNCF post-training quantization, calibrated on user calibration data (.npy, 200)") in stages
    assert manifest["timings"]["quantize_s"] > 0
    # the served INT8 model classifies the held-out digits about as well as Keras does
    agreement = float(np.mean(probabilities.argmax(1) == digits.keras_probs.argmax(1)))
    assert agreement >= 0.95
    assert (served_digits.repository / "digits-int8" / "1" / "model.xml").exists()
    assert not (served_digits.repository / "digits-int8" / "1" / "model-fp32.xml").exists()
    assert not (served_digits.repository / "digits-int8" / "1" / "calibration").exists()  # used up, not kept


def test_int8_upload_calibrated_on_an_image_folder(served_digits, digits, tmp_path):
    from digits import write_pngs

    write_pngs(digits.x_test, digits.y_test, tmp_path / "pngs", count=24)
    with served_digits.client(timeout=120) as client:
        manifest = client.upload(digits.paths["keras"], name="digits-int8-images", precision="int8", calibration=tmp_path / "pngs")
    assert manifest["quantization"]["calibration_samples"] == 24
    assert "24 images" in manifest["quantization"]["calibration"]
    assert manifest["parity"]["samples"] == 24 and manifest["parity"]["top1_agreement"] is not None


def test_int8_image_calibration_warns_on_raw_pixels_and_saturated_outputs(served_digits, digits, tmp_path):
    """digits was trained on [0, 1]: calibrating on raw 0-255 PNGs (preprocessing none) saturates its softmax, so
    parity passes and proves nothing. That must be said; with --preprocess unit it is fine and nothing is said."""
    from digits import write_pngs

    write_pngs(digits.x_test, digits.y_test, tmp_path / "pngs", count=24)
    with served_digits.client(timeout=120) as client:
        raw = client.upload(digits.paths["keras"], name="digits-int8-raw", precision="int8", calibration=tmp_path / "pngs")
        scaled = client.upload(digits.paths["keras"], name="digits-int8-unit", precision="int8", calibration=tmp_path / "pngs",
                               preprocess="unit")
    warnings = " ".join(raw["warnings"])
    assert "raw 0-255 pixels (preprocessing 'none')" in warnings and "--preprocess" in warnings
    assert "output 'probabilities' is saturated" in warnings
    assert not [w for w in scaled["warnings"] if "saturated" in w or "raw 0-255" in w]


def test_int8_without_calibration_warns_loudly(served_digits, digits):
    done = subprocess.run([str(KVCTL), "--server", served_digits.address, "upload", str(digits.paths["h5"]), "--name", "digits-int8-synthetic",
                           "--precision", "int8", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING: no calibration data was given" in done.stderr
    with served_digits.client() as client:
        manifest = client.describe("digits-int8-synthetic")["manifest"]
    assert manifest["quantization"]["synthetic_calibration"] is True
    assert manifest["warnings"] and "synthetic" in manifest["warnings"][0]
    assert "seeded synthetic" in manifest["parity"]["inputs"]


@pytest.mark.parametrize("precision, calibration, code, words", [
    ("fp16", "npy", grpc.StatusCode.INVALID_ARGUMENT, ["only used by --precision int8"]),
    ("int8", "bad-npy", grpc.StatusCode.INVALID_ARGUMENT, ["calibration data cannot be used", "[-1, 8, 8, 1]"]),
    ("int4", None, grpc.StatusCode.INVALID_ARGUMENT, ["unknown precision 'int4'", "int8"]),
])
def test_bad_int8_requests(served_digits, digits, tmp_path, precision, calibration, code, words):
    path = None
    if calibration:
        path = tmp_path / "calibration.npy"
        np.save(path, digits.x_test[:8] if calibration == "npy" else np.zeros((4, 3, 3), np.float32))
    with served_digits.client(timeout=120) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.upload(digits.paths["h5"], name="bad-int8", precision=precision, calibration=path)
        assert caught.value.code() == code, caught.value.details()
        assert all(word in caught.value.details() for word in words), caught.value.details()
        assert "bad-int8" not in {m["name"] for m in client.list_models()}
