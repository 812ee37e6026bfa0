"""Parity inputs that prove something (server/uploads/parity_inputs.py): realistic candidates, degenerate
references detected, and a check that stays weak never reported as a pass."""

from __future__ import annotations

import numpy as np
import pytest

from kvserve.plugins.types import TensorSpec
from kvserve.server.uploads.parity import parity_report
from kvserve.server.uploads.parity_inputs import MAX_ROWS, MIN_ROWS, candidates, choose, degenerate, parity_rows, synthetic_pixels

IMAGE = TensorSpec("image", "FP32", (-1, 32, 32, 3))


def test_image_candidates_follow_the_preprocessing_first():
    first = candidates([IMAGE], 4, {"mode": "caffe", "source": "suggested for Keras resnet50"})[0]
    x = first.feeds["image"]
    assert x.shape == (4, 32, 32, 3) and "caffe" in first.description
    assert x.min() < -90 and x.max() > 90, "caffe-style inputs span about [-124, 152]"


def test_models_that_rescale_themselves_get_raw_pixels_first():
    first = candidates([IMAGE], 4, None, {"image": {"kind": "pixels"}})[0]
    assert "0-255" in first.description and first.feeds["image"].max() > 100 and first.feeds["image"].min() >= 0


def test_uint8_images_get_0_255_pixels_first():
    """A uint8 image input (decoded JPEG pixels, rescaled inside the model) judged on 0-10 proved little."""
    first = candidates([TensorSpec("pixels", "UINT8", (-1, 16, 16, 3))], 4)[0]
    x = first.feeds["pixels"]
    assert x.dtype == np.uint8 and "0-255" in first.description and x.max() > 200 and x.min() < 50
    tokens = candidates([TensorSpec("ids", "INT32", (-1, 12))], 4)[0]
    assert "pixels" not in tokens.description  # not an image: integers as before


def test_tokens_stay_inside_the_vocabulary_and_strings_come_from_it():
    specs = [TensorSpec("ids", "INT32", (-1, 12)), TensorSpec("text", "BYTES", (-1, 1))]
    hints = {"ids": {"kind": "tokens", "high": 50}, "text": {"kind": "strings", "vocabulary": ["", "[UNK]", "cat", "dog"]}}
    first = candidates(specs, 8, None, hints)[0]
    ids, text = first.feeds["ids"], first.feeds["text"]
    assert ids.dtype == np.int32 and ids.min() >= 1 and ids.max() < 50
    words = {w for sentence in text.reshape(-1) for w in sentence.decode().split()}
    assert words <= {"cat", "dog"} and text.shape == (8, 1)


def test_synthetic_pixels_look_like_images():
    pixels = synthetic_pixels(np.random.default_rng(0), 2, 64, 64, 3)
    assert pixels.min() >= 0 and pixels.max() <= 255
    neighbour = np.abs(np.diff(pixels, axis=2)).mean()
    assert neighbour < 0.5 * np.abs(pixels - pixels.mean()).mean(), "neighbouring pixels correlate"
    assert not np.allclose(pixels[0], pixels[1])


def test_synthetic_pixels_mix_smooth_fields_and_hard_edges():
    """Half the rows are flat regions with hard edges: a parity batch of smooth fields alone passed EfficientNetB0
    with fp16 weights at 2e-3 while edged images were 0.2 away."""
    pixels = synthetic_pixels(np.random.default_rng(0), 4, 32, 32, 3).astype(np.float64)
    steps = np.abs(np.diff(pixels, axis=2))
    big = (steps > 100).mean(axis=(1, 2, 3))  # jumps far beyond the fine noise: region boundaries
    assert big[1] > 5 * max(big[0], 1e-4) and big[3] > 5 * max(big[2], 1e-4), big


@pytest.mark.parametrize("outputs, problem", [
    ({"p": np.tile([0.1, 0.9], (4, 1))}, "same for every input"),
    ({"p": np.array([[0.1, np.nan], [0.2, 0.3]])}, "NaN or inf"),
    ({"p": np.array([[0.1, 0.9], [0.2, 0.8]])}, None),
    ({"p": np.array([[0.5, 0.5]])}, None),  # one row: nothing to compare across
    # a softmax pushed to one-hot (ResNet50V2 fed caffe-scaled pixels): any precision agrees, proving nothing
    ({"p": np.array([[1.0, 0.0, 0.0], [0.0, 1.0 - 1e-7, 1e-7], [0.0, 0.0, 1.0]], np.float32)}, "saturated"),
    ({"t": np.array([[-1.0, 1.0], [1.0, -1.0]], np.float32)}, "saturated"),  # tanh at its ends
    ({"p": np.array([[1.0, 0.0], [0.7, 0.3]], np.float32)}, None),  # one row informative: enough
    ({"i": np.array([[1, 0], [0, 1]], np.int64)}, None),  # integer outputs compare exactly
])
def test_degenerate(outputs, problem):
    found = degenerate(outputs)
    assert (found is None) if problem is None else (problem in found)


def _bn_like(feeds):
    """A model whose units switch on only for inputs far above 1 (like BatchNorm statistics set for caffe-style
    pixels followed by ReLU): uniform [0, 1) gives it a constant output."""
    x = feeds["image"].reshape(len(feeds["image"]), -1).astype(np.float64)
    hidden = np.maximum(x[:, :16] - 50.0, 0.0)
    return {"scores": hidden @ np.linspace(0.5, 1.5, 16 * 3).reshape(16, 3)}


def test_choose_skips_inputs_that_give_a_constant_reference():
    chosen = choose(_bn_like, [IMAGE], batch=6)
    assert chosen.weak is None and "uniform [0, 1)" not in chosen.description
    assert any("same for every input" in t for t in chosen.tried)
    assert np.ptp(chosen.reference_outputs["scores"], axis=0).max() > 0


def test_a_model_constant_on_every_input_is_weak_never_passed():
    constant = lambda feeds: {"scores": np.ones((len(feeds["image"]), 3))}  # noqa: E731
    chosen = choose(constant, [IMAGE], batch=4)
    assert chosen.weak and "prove nothing" in chosen.weak
    report = parity_report(constant, constant, [IMAGE], "fp32", "f32", feeds=chosen.feeds, feeds_source=chosen.description,
                           reference_outputs=chosen.reference_outputs, weak=chosen.weak)
    assert report["max_rel_diff"] == 0.0 and report["within_tolerance"]
    assert report["verdict"] == "weak" and report["passed"] is False


def test_user_samples_are_used_as_given_and_still_checked():
    samples = {"image": np.zeros((3, 32, 32, 3), np.float32)}
    chosen = choose(_bn_like, [IMAGE], user=(samples, "user samples (.npy, 3)"))
    assert chosen.description == "user samples (.npy, 3)" and chosen.feeds is samples
    assert chosen.weak and "same for every input" in chosen.weak


def test_fixed_batch_models_are_run_one_row_at_a_time():
    seen = []

    def fixed(feeds):
        seen.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    chosen = choose(fixed, [TensorSpec("x", "FP32", (1, 5))], batch=4)
    assert set(seen) == {1} and chosen.reference_outputs["y"].shape == (4, 5) and chosen.weak is None


def test_parity_rows_grow_for_small_inputs_and_stay_bounded_for_large():
    """8 rows missed a one-in-twenty error tail (EfficientNetV2B0 at 32x32): small inputs get many more rows."""
    small = [TensorSpec("image", "FP32", (-1, 32, 32, 3))]
    assert parity_rows(small) == MAX_ROWS == 64
    assert parity_rows([TensorSpec("x", "FP32", (-1, 10))]) == MAX_ROWS
    assert parity_rows([TensorSpec("image", "FP32", (-1, 299, 299, 3))]) == MIN_ROWS
    assert MIN_ROWS < parity_rows([TensorSpec("image", "FP32", (-1, 64, 64, 3))]) < MAX_ROWS
