"""Issue 10's verification, end to end through a real kvd: parity inputs that prove something, the precision
ladder (`auto`) instead of a refusal, a weak check said out loud, and the TF fallback.

The models are built here, tiny and deterministic: each one fails the old check in its own way.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import start_kvd
from precision import promised, rel_diff


def _save(model, folder: Path, name: str) -> Path:
    path = folder / f"{name}.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def ladder_models(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    """name -> (.keras path, realistic inputs, Keras's answers on them)."""
    import keras

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("ladder-models")
    models = {}

    # Outputs 2**-12 * x, computed as (1 + 2**-12) x - x: fp16 weights round 1 + 2**-12 to 1 and answer 0 on any
    # CPU, so only the fp32-weights rung of the ladder is right.
    x = keras.Input((4,), name="x")
    up = keras.layers.Dense(4, use_bias=False, name="up")
    same = keras.layers.Dense(4, use_bias=False, name="same")
    y = keras.layers.Subtract(name="tiny")([up(x), same(x)])
    model = keras.Model(x, y, name="fp16_sensitive")
    up.set_weights([np.eye(4, dtype=np.float32) * np.float32(1 + 2**-12)])
    same.set_weights([np.eye(4, dtype=np.float32)])
    feed = np.random.default_rng(1).random((16, 4), dtype=np.float32)
    models["fp16-sensitive"] = (_save(model, folder, "fp16_sensitive"), feed, np.asarray(model(feed)))

    # Outputs 2**-9 * x as (1 + 2**-9) x - x: fp16 keeps 1 + 2**-9 exactly (10 fraction bits), bf16 (7 bits) rounds
    # it to 1, so fp16 weights are right in f32 execution and answer 0 in bf16 execution.
    x = keras.Input((4,), name="x")
    up = keras.layers.Dense(4, use_bias=False, name="up")
    same = keras.layers.Dense(4, use_bias=False, name="same")
    model = keras.Model(x, keras.layers.Subtract(name="small")([up(x), same(x)]), name="bf16_sensitive")
    up.set_weights([np.eye(4, dtype=np.float32) * np.float32(1 + 2**-9)])
    same.set_weights([np.eye(4, dtype=np.float32)])
    feed = np.random.default_rng(6).random((16, 4), dtype=np.float32)
    models["bf16-sensitive"] = (_save(model, folder, "bf16_sensitive"), feed, np.asarray(model(feed)))

    # BatchNorm statistics set for 0-255 pixels, then ReLU: uniform [0, 1) gives every input the same answer.
    image = keras.Input((16, 16, 3), name="image")
    conv = keras.layers.Conv2D(8, 3, name="conv")(image)
    norm = keras.layers.BatchNormalization(name="bn")
    hidden = keras.layers.ReLU()(norm(conv))
    pooled = keras.layers.GlobalAveragePooling2D()(hidden)
    head = keras.layers.Dense(5, activation="softmax", name="scores")
    model = keras.Model(image, head(pooled), name="pixel_bn")
    gamma, beta, _, _ = norm.get_weights()
    norm.set_weights([gamma, beta, np.full(8, 60.0, np.float32), np.full(8, 400.0, np.float32)])
    head.set_weights([np.random.default_rng(2).normal(0, 0.2, (8, 5)).astype(np.float32), np.zeros(5, np.float32)])
    pixels = np.random.default_rng(3).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    models["pixel-bn"] = (_save(model, folder, "pixel_bn"), pixels, np.asarray(model(pixels)))

    # The same answer for every input (a zero kernel): agreement proves nothing.
    x = keras.Input((6,), name="x")
    dense = keras.layers.Dense(3, name="flat")
    model = keras.Model(x, dense(x), name="constant")
    dense.set_weights([np.zeros((6, 3), np.float32), np.array([0.5, -1.0, 2.0], np.float32)])
    feed = np.random.default_rng(4).random((4, 6), dtype=np.float32)
    models["constant"] = (_save(model, folder, "constant"), feed, np.asarray(model(feed)))

    # Integer tokens: parity inputs must lie inside the Embedding's vocabulary.
    ids = keras.Input((10,), dtype="int32", name="ids")
    embedded = keras.layers.Embedding(50, 8, name="embed")(ids)
    scores = keras.layers.Dense(3, name="scores")(keras.layers.GlobalAveragePooling1D()(embedded))
    model = keras.Model(ids, scores, name="tokens")
    tokens = np.random.default_rng(5).integers(0, 50, (8, 10)).astype(np.int32)
    models["tokens"] = (_save(model, folder, "tokens"), tokens, np.asarray(model(tokens)))
    return models


@pytest.fixture(scope="module")
def ladder_kvd(tmp_path_factory):
    kvd = start_kvd(tmp_path_factory.mktemp("ladder") / "repo")
    yield kvd
    kvd.kill()


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_auto_climbs_the_ladder_instead_of_refusing(ladder_kvd, ladder_models):
    path, x, expected = ladder_models["fp16-sensitive"]
    with ladder_kvd.client() as client:
        manifest = client.upload(path, name="sensitive")
        served = client.infer("sensitive", x)["tiny"]
        described = client.describe("sensitive")
    assert manifest["precision_requested"] == "auto" and manifest["precision"] == "fp32"
    ladder = manifest["ladder"]
    assert [(r["weights"], r["verdict"]) for r in ladder] == [("fp16", "fail"), ("fp16", "fail"), ("fp32", "pass")]
    assert ladder[1]["execution"] == "f32" and all("max rel diff" in r["why_next"] for r in ladder[:2])
    assert manifest["parity"]["verdict"] == "pass" and manifest["parity"]["execution_precision"] == "f32"
    assert "served by CPU (f32 execution)" in described["reason"]
    assert rel_diff(served, expected) <= promised(manifest)


def test_an_explicit_precision_means_exactly_that_and_names_the_better_option(ladder_kvd, ladder_models):
    path, _, _ = ladder_models["fp16-sensitive"]
    with ladder_kvd.client() as client:
        error = _rpc_error(lambda: client.upload(path, name="sensitive16", precision="fp16", devices=["CPU"]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "try --precision auto" in error.details() and "fp16 weights in f32 execution" in error.details() and "\n" not in error.details()
    assert "promised, with headroom" in error.details(), "the message names the figure the check really used"


def test_explicit_fp16_keeps_its_weights_and_steps_to_f32_execution(ladder_kvd, ladder_models):
    """The user chose fp16 weights, not bf16 execution: where the device's fastest execution (bf16) drifts, the
    weights stay fp16 and execution steps to f32; on a CPU whose default is f32 the first rung already passes."""
    path, x, expected = ladder_models["bf16-sensitive"]
    with ladder_kvd.client() as client:
        manifest = client.upload(path, name="bf16-sensitive", precision="fp16", devices=["CPU"])
        served = client.infer("bf16-sensitive", x)["small"]
    assert manifest["precision_requested"] == "fp16" and manifest["precision"] == "fp16"
    assert manifest["parity"]["verdict"] == "pass" and manifest["parity"]["execution_precision"] == "f32"
    ladder = manifest["ladder"]
    assert (ladder[-1]["weights"], ladder[-1]["execution"], ladder[-1]["verdict"]) == ("fp16", "f32", "pass")
    if len(ladder) > 1:  # the device's default was not f32 (bf16): that rung failed, then f32 passed
        assert len(ladder) == 2 and ladder[0]["verdict"] == "fail" and ladder[0]["execution"] != "f32"
        assert "max rel diff" in ladder[0]["why_next"]
    assert rel_diff(served, expected) <= promised(manifest)


def test_parity_inputs_avoid_a_constant_reference(ladder_kvd, ladder_models):
    path, x, expected = ladder_models["pixel-bn"]
    with ladder_kvd.client() as client:
        manifest = client.upload(path, name="pixel-bn")
        served = client.infer("pixel-bn", x)["scores"]
    parity = manifest["parity"]
    assert parity["verdict"] == "pass" and "uniform [0, 1)" not in parity["inputs"]
    assert any("uniform [0, 1)" in t and "same for every input" in t for t in parity["inputs_tried"])
    assert np.ptp(expected, axis=0).max() > 1e-3, "the test model itself must answer differently per input"
    assert rel_diff(served, expected) <= promised(manifest)


def test_a_weak_check_is_said_and_never_called_a_pass(ladder_kvd, ladder_models):
    path, x, expected = ladder_models["constant"]
    events = []
    with ladder_kvd.client() as client:
        manifest = client.upload(path, name="constant", progress=events.append)
        served = client.infer("constant", x)["flat"]
    parity = manifest["parity"]
    assert parity["verdict"] == "weak" and parity["passed"] is False and "prove nothing" in parity["weak"]
    assert any("parity check is weak" in w for w in manifest["warnings"])
    assert any("parity check is weak" in (e.message or "") for e in events)
    assert manifest["precision"] == "fp32", "nothing was proven, so the most exact rung serves"
    np.testing.assert_allclose(served, expected, rtol=1e-6)


def test_tokens_come_from_the_vocabulary(ladder_kvd, ladder_models):
    path, x, expected = ladder_models["tokens"]
    with ladder_kvd.client() as client:
        manifest = client.upload(path, name="tokens")
        served = client.infer("tokens", x)["scores"]
    assert "tokens in [1, 50)" in manifest["parity"]["inputs"] and manifest["parity"]["verdict"] == "pass"
    assert rel_diff(served, expected) <= promised(manifest)
