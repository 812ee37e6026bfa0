"""Device preference, the TF fallback, parity reports and their failure modes, against a real kvd."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import start_kvd
from plugin_sites import fake_devices_site, pythonpath
from test_upload_formats import tensorflow_loaded


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_tf_device_serves_the_original_model(kvd_factory, digits):
    kvd = kvd_factory()
    with kvd.client() as client:
        assert not tensorflow_loaded(kvd.process.pid)
        manifest = client.upload(digits.paths["keras"], name="digits", devices=["TF"])
        assert manifest["served_by"]["backend"] == "TF"
        assert client.describe("digits")["device"] == "TF"
        assert client.metadata("digits")["platform"] == "tensorflow:TF"
        probs = client.infer("digits", digits.x_test)["probabilities"]
    assert np.max(np.abs(probs - digits.keras_probs)) < 1e-5
    assert not tensorflow_loaded(kvd.process.pid), "a TF-served model runs in its worker child, never in kvd"


@pytest.fixture(scope="module")
def fake_devices_kvd(tmp_path_factory, digits):
    """A kvd with the simulated NOCARD (never available) and BROKEN (every load fails) devices plugged in."""
    work = tmp_path_factory.mktemp("fake-devices")
    kvd = start_kvd(work / "repo", env=pythonpath(fake_devices_site(work / "site")))
    yield kvd
    kvd.kill()


def test_unavailable_devices_are_skipped_with_the_reason_recorded(fake_devices_kvd, digits):
    with fake_devices_kvd.client() as client:
        manifest = client.upload(digits.paths["h5"], name="prefers-card", devices=["NOCARD", "BROKEN", "CPU"])
        reason = manifest["served_by"]["reason"]
        assert manifest["served_by"]["backend"] == "CPU"
        assert "NOCARD unavailable: simulated: no such card in this host" in reason
        assert "BROKEN failed to load it: simulated driver failure" in reason
        assert re.search(r"served by CPU \((f32|bf16|f16) execution\)", reason), reason
        index = {(m["name"], m["version"]): m for m in client.list_models()}
        assert index[("prefers-card", "1")]["reason"] == reason
        assert client.describe("prefers-card")["reason"] == reason
        assert client.metadata("prefers-card")["platform"] == "openvino:CPU"
        error = _rpc_error(lambda: client.upload(digits.paths["h5"], name="card-only", devices=["NOCARD"]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no device could serve the model: NOCARD unavailable: simulated: no such card" in error.details()
        assert "card-only" not in {m["name"] for m in client.list_models()}


def test_real_devices_report_what_this_host_has(fake_devices_kvd, digits):
    """GPU and MYRIAD go through the same skip logic whatever this host has: the reason recorded for a device is
    the one ``kvctl devices`` gives, and an available one serves."""
    with fake_devices_kvd.client() as client:
        devices = {d["name"]: d for d in client.devices()}
        assert {"CPU", "GPU", "MYRIAD", "TF", "NOCARD", "BROKEN"} <= set(devices)
        manifest = client.upload(digits.paths["h5"], name="prefers-gpu", devices=["GPU", "MYRIAD", "CPU"])
    reason = manifest["served_by"]["reason"]
    first_available = next(name for name in ("GPU", "MYRIAD", "CPU") if devices[name]["available"])
    for name in ("GPU", "MYRIAD")[: ("GPU", "MYRIAD", "CPU").index(first_available)]:
        assert f"{name} unavailable: {devices[name]['reason']}" in reason
    assert manifest["served_by"]["backend"] in (first_available, "CPU")


def test_repository_load_moves_a_model_between_devices(fake_devices_kvd, digits):
    with fake_devices_kvd.client() as client:
        client.upload(digits.paths["h5"], name="mover", precision="fp32")
        on_cpu = client.infer("mover", digits.x_test[:32])["probabilities"]
        client.load("mover", devices=["TF"])
        assert client.describe("mover")["device"] == "TF"
        on_tf = client.infer("mover", digits.x_test[:32])["probabilities"]
        client.load("mover", devices=["CPU"])
        assert client.describe("mover")["device"] == "CPU"
        error = _rpc_error(lambda: client.load("mover", devices=["NOCARD"]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "NOCARD unavailable" in error.details()
        assert client.describe("mover")["device"] == "CPU", "a failed move keeps the model where it was"
        assert client.model_ready("mover")
    np.testing.assert_allclose(on_cpu, on_tf, atol=1e-5)


@pytest.fixture(scope="module")
def lgamma_savedmodel(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A Keras model with a custom layer using lgamma, which OpenVINO cannot convert, exported as a SavedModel."""
    import keras
    import tensorflow as tf

    class LogGamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.lgamma(x + 1.0)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="features")
    outputs = keras.layers.Dense(3, activation="softmax", name="scores")(LogGamma()(inputs))
    model = keras.Model(inputs, outputs)
    out = tmp_path_factory.mktemp("lgamma")
    model.export(str(out / "lgamma_model"), verbose=False)
    archive = Path(shutil.make_archive(str(out / "lgamma_model"), "zip", root_dir=out, base_dir="lgamma_model"))
    x = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    return archive, x, np.asarray(model(x, training=False))


def test_unconvertible_custom_layer_falls_back_to_tf(kvd_factory, lgamma_savedmodel):
    """A SavedModel only TF can serve runs its graph as stored: served with the opt-in (tests/test_isolation.py
    checks the refusal without it)."""
    archive, x, expected = lgamma_savedmodel
    kvd = kvd_factory(None, "--allow-unsafe-deserialization")
    with kvd.client() as client:
        manifest = client.upload(archive, name="lgamma")
        assert manifest["ir"] is None and manifest["parity"]["backend"] == "TF" and manifest["parity"]["passed"] is True
        assert "Lgamma" in manifest["conversion_error"]
        assert manifest["served_by"]["backend"] == "TF"
        assert "CPU cannot serve it" in manifest["served_by"]["reason"]
        got = next(iter(client.infer("lgamma", x).values()))
        described = client.describe("lgamma")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert described["device"] == "TF" and "Lgamma" in described["manifest"]["conversion_error"]


def test_unconvertible_model_is_refused_naming_the_op_without_tf(served_digits, lgamma_savedmodel):
    archive, _, _ = lgamma_savedmodel
    with served_digits.client() as client:
        error = _rpc_error(lambda: client.upload(archive, name="lgamma-cpu", devices=["CPU"]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "OpenVINO could not convert the model" in error.details() and "Lgamma" in error.details()


def test_user_samples_drive_the_parity_check(served_digits, digits, tmp_path):
    samples = tmp_path / "samples.npy"
    np.save(samples, digits.x_test[:20])
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for index in range(3):
        Image.fromarray((digits.x_test[index, ..., 0] * 255).astype(np.uint8), mode="L").resize((32, 32)).save(images / f"{index}.png")
    with served_digits.client() as client:
        manifest = client.upload(digits.paths["h5"], name="sampled", samples=samples)
        assert manifest["parity"]["samples"] == 20 and manifest["parity"]["inputs"] == "user samples (.npy, 20)"
        assert manifest["parity"]["top1_agreement"] == 1.0
        manifest = client.upload(digits.paths["h5"], name="sampled", samples=images, tolerance=0.05)
        assert manifest["parity"]["inputs"] == "user samples (3 images)" and manifest["parity"]["tolerance_max_rel_diff"] == 0.05
        bad = tmp_path / "bad.npy"
        np.save(bad, np.zeros((2, 5, 5), np.float32))
        error = _rpc_error(lambda: client.upload(digits.paths["h5"], name="sampled", samples=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "parity samples cannot be used" in error.details()


def test_corrupted_ir_fails_the_parity_check(kvd_factory, digits):
    """An IR that answers wrong at every rung of the ladder: served by TF when TF is in the device list, else
    refused naming the rungs tried, unless --force."""
    kvd = kvd_factory(env={"KVSERVE_TEST_FAULT": "corrupt-ir"})
    with kvd.client() as client:
        fallback = client.upload(digits.paths["h5"], name="corrupt-tf")
        assert fallback["served_by"]["backend"] == "TF" and fallback["ir"] is None
        assert "parity failed at every precision tried" in fallback["conversion_error"]
        # the parity recorded is the TF backend's own, against the original (the failed IR check is kept beside it)
        tf_parity = fallback["parity"]
        assert tf_parity["backend"] == "TF" and tf_parity["passed"] is True and tf_parity["execution_precision"] == "f32"
        assert tf_parity["tolerance_max_rel_diff"] == 1e-3 and tf_parity["max_rel_diff"] <= 5e-4
        assert fallback["openvino_parity"]["verdict"] == "fail"
        error = _rpc_error(lambda: client.upload(digits.paths["h5"], name="corrupt", devices=["CPU"]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "disagrees with the original at every precision tried" in error.details() and "--force" in error.details()
        assert "\n" not in error.details()
        assert [m["name"] for m in client.list_models()] == ["corrupt-tf"]
        error = _rpc_error(lambda: client.upload(digits.paths["h5"], name="corrupt", devices=["CPU"], precision="fp16"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "try --precision auto" in error.details()
        manifest = client.upload(digits.paths["h5"], name="corrupt", devices=["CPU"], force=True)
        assert manifest["parity"]["passed"] is False and manifest["parity"]["verdict"] == "fail"
    stored = json.loads((kvd.repository / "corrupt" / "1" / "manifest.json").read_text())
    assert stored["parity"]["passed"] is False and [r["verdict"] for r in stored["ladder"]] == ["fail", "fail", "fail"]


def test_converter_crash_fails_only_that_upload(kvd_factory, digits):
    kvd = kvd_factory(env={"KVSERVE_TEST_FAULT": "converter-crash"})
    with kvd.client() as client:
        error = _rpc_error(lambda: client.upload(digits.paths["h5"], name="crashy"))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "converter process died (signal 11)" in error.details() and "kvd keeps serving" in error.details()
        assert client.live() and client.ready()
    assert not any((kvd.repository / ".staging").iterdir())


def test_unload_then_load_again(served_digits, digits):
    with served_digits.client() as client:
        client.upload(digits.paths["h5"], name="toggle")
        client.unload("toggle")
        assert not client.model_ready("toggle")
        error = _rpc_error(lambda: client.infer("toggle", digits.x_test[:1]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "load it with RepositoryModelLoad" in error.details()
        assert {(m["name"], m["state"]) for m in client.list_models() if m["name"] == "toggle"} == {("toggle", "UNAVAILABLE")}
        client.load("toggle")
        assert client.model_ready("toggle")
        assert client.infer("toggle", digits.x_test[:1])["probabilities"].shape == (1, 10)
        error = _rpc_error(lambda: client.unload("no-such-model"))
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_forced_execution_precision_reaches_parity_and_serving(kvd_factory, digits):
    """KVSERVE_INFERENCE_PRECISION=f32 (what ``pytest --ov-precision f32`` sets) runs an fp16 upload in f32 on any
    CPU: the parity check, its tolerance and the served model all say so."""
    kvd = kvd_factory(env={"KVSERVE_INFERENCE_PRECISION": "f32"})
    with kvd.client() as client:
        manifest = client.upload(digits.paths["h5"], name="forced")
        described = client.describe("forced")
    assert manifest["precision"] == "fp16" and manifest["parity"]["execution_precision"] == "f32"
    assert manifest["parity"]["tolerance_max_rel_diff"] == pytest.approx(1e-2)
    assert "served by CPU (f32 execution)" in described["reason"]


def test_a_mistyped_forced_precision_stops_kvd_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "kvserve.server.main", "--http-address", "", "--repository", str(tmp_path / "repo"),
                             "--address", "127.0.0.1:0"], env={**os.environ, "KVSERVE_INFERENCE_PRECISION": "fp8"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "KVSERVE_INFERENCE_PRECISION='fp8'" in lines[0] and "use auto, f32, bf16, f16" in lines[0]
    assert "Traceback" not in result.stderr
