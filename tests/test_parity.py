"""Pure unit tests for kvserve.server.uploads.parity (seeded inputs, compare, parity_report) and TensorSpec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvserve.plugins.types import TensorSpec
from kvserve.server.uploads.parity import compare, parity_report, seeded_inputs, tolerance_for

IMAGE = TensorSpec("image", "FP32", (-1, 8, 8, 3))


# --- seeded_inputs -----------------------------------------------------------------------------------------


def test_seeded_inputs_reproducible_for_same_seed():
    specs = [IMAGE, TensorSpec("ids", "INT32", (-1, 5)), TensorSpec("mask", "BOOL", (-1, 5))]
    first, second = seeded_inputs(specs, 4, seed=3), seeded_inputs(specs, 4, seed=3)
    assert list(first) == ["image", "ids", "mask"]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_seeded_inputs_default_seed_is_zero():
    np.testing.assert_array_equal(seeded_inputs([IMAGE], 2)["image"], seeded_inputs([IMAGE], 2, seed=0)["image"])


def test_seeded_inputs_differ_for_another_seed():
    assert not np.array_equal(seeded_inputs([IMAGE], 4, seed=0)["image"], seeded_inputs([IMAGE], 4, seed=1)["image"])


def test_seeded_inputs_dynamic_batch_and_other_dims():
    specs = [IMAGE, TensorSpec("seq", "FP32", (-1, -1, 4)), TensorSpec("fixed", "FP32", (2, -1)),
             TensorSpec("scalar", "FP32", ())]
    feeds = seeded_inputs(specs, 5)
    assert feeds["image"].shape == (5, 8, 8, 3)
    assert feeds["seq"].shape == (5, 16, 4)
    assert feeds["fixed"].shape == (2, 16)  # a static batch dim is kept
    assert feeds["scalar"].shape == ()


def test_seeded_inputs_float_range():
    x = seeded_inputs([IMAGE], 8)["image"]
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() < 1.0
    assert x.std() > 0.1  # actually random, not constant


@pytest.mark.parametrize("datatype, dtype", [("FP32", np.float32), ("FP16", np.float16), ("FP64", np.float64),
                                             ("INT32", np.int32), ("INT64", np.int64), ("INT8", np.int8),
                                             ("UINT8", np.uint8), ("UINT16", np.uint16), ("INT16", np.int16),
                                             ("BOOL", np.bool_)])
def test_seeded_inputs_honour_dtype(datatype, dtype):
    x = seeded_inputs([TensorSpec("x", datatype, (-1, 64))], 4)["x"]
    assert x.dtype == np.dtype(dtype)
    assert x.shape == (4, 64)
    if datatype == "BOOL":
        assert x.any() and not x.all()
    elif datatype.startswith(("INT", "UINT")):
        assert set(np.unique(x).tolist()) <= {0, 1}


@pytest.mark.parametrize("datatype", ["UINT32", "UINT64"])
def test_seeded_inputs_uint32_uint64(datatype):
    assert seeded_inputs([TensorSpec("x", datatype, (-1, 3))], 2)["x"].shape == (2, 3)


# --- compare -----------------------------------------------------------------------------------------------


def test_compare_identical_outputs():
    out = {"probs": np.random.default_rng(0).random((4, 10)).astype(np.float32)}
    report = compare(out, {"probs": out["probs"].copy()})
    assert report["max_abs_diff"] == 0.0 and report["max_rel_diff"] == 0.0
    assert report["top1_agreement"] == 1.0
    assert report["outputs"]["probs"] == {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "top1_agreement": 1.0}


def test_compare_known_perturbation():
    ref = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, -10.0]], dtype=np.float32)
    got = ref.copy()
    got[0, 0] += 0.5     # abs diff 0.5, rel to the spread (5 - -10 = 15) -> 1/30
    got[1, 2] -= 0.25
    report = compare({"y": ref}, {"y": got})
    assert report["max_abs_diff"] == pytest.approx(0.5)
    assert report["max_rel_diff"] == pytest.approx(0.5 / 15)
    assert report["top1_agreement"] == 1.0


def test_rows_are_also_judged_by_their_own_groups_spread():
    """One extreme row widens the batch's spread; the other rows' error must still count against their own."""
    ref = np.tile([[0.2, 0.3, 0.5]], (8, 1)) + np.linspace(0, 0.2, 8)[:, None] * [1, -1, 0]
    ref[0] = [1.0, 0.0, 0.0]  # an extreme row: the batch's spread is 1.0, the other rows' about 0.45
    got = ref.copy()
    got[5, 2] += 0.01
    report = compare({"p": ref}, {"p": got})
    group = float(np.ptp(ref[4:8]))
    assert report["max_rel_diff"] == pytest.approx(0.01 / group) and report["max_rel_diff"] > 0.01 * 2


def test_a_group_of_near_equal_rows_is_floored_at_a_quarter_of_the_batch_spread():
    ref = np.concatenate([np.linspace(0, 1, 4), np.full(4, 0.5) + np.arange(4) * 1e-9])[:, None]
    got = ref + 1e-6
    assert compare({"y": ref}, {"y": got})["max_rel_diff"] == pytest.approx(1e-6 / 0.25)


def test_flat_output_cannot_hide_a_wrong_model():
    """A nearly flat softmax (spread 1e-5): an IR answering a constant must not pass on a tiny absolute error."""
    ref = np.full((2, 1000), 1e-3) + np.linspace(0, 1e-5, 1000)
    report = compare({"p": ref}, {"p": np.full_like(ref, 1e-3)})
    assert report["max_abs_diff"] < 2e-5
    assert report["max_rel_diff"] == pytest.approx(1.0)


def test_compare_top1_agreement_is_a_fraction():
    ref = np.eye(4, 5)                 # argmax per row: 0, 1, 2, 3
    got = ref.copy()
    got[1, 4] = 2.0                    # row 1 now votes 4
    got[3, 0] = 2.0                    # row 3 now votes 0
    report = compare({"logits": ref}, {"logits": got})
    assert report["outputs"]["logits"]["top1_agreement"] == pytest.approx(0.5)
    assert report["top1_agreement"] == pytest.approx(0.5)


def test_compare_top1_over_last_axis_of_3d_outputs():
    ref = np.zeros((2, 3, 4))
    ref[..., 1] = 1.0
    got = ref.copy()
    got[0, 0, 3] = 5.0
    assert compare({"t": ref}, {"t": got})["top1_agreement"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("shape", [(8,), (8, 1), (2, 3, 1), ()])
def test_compare_no_top1_for_1d_or_last_dim_1(shape):
    ref = np.ones(shape)
    report = compare({"score": ref}, {"score": ref + 0.1})
    assert "top1_agreement" not in report["outputs"]["score"]
    assert report["top1_agreement"] is None
    assert report["max_abs_diff"] == pytest.approx(0.1)


def test_compare_worst_case_over_outputs():
    a = np.full((2, 3), 10.0)
    b = np.full((2, 3), 1.0)
    report = compare({"a": a, "b": b}, {"a": a + 1.0, "b": b + 0.5})
    assert report["outputs"]["a"]["max_rel_diff"] == pytest.approx(0.1)
    assert report["outputs"]["b"]["max_rel_diff"] == pytest.approx(0.5)
    assert report["max_abs_diff"] == pytest.approx(1.0)
    assert report["max_rel_diff"] == pytest.approx(0.5)


def test_compare_zero_reference_uses_abs_diff():
    report = compare({"z": np.zeros((2, 3))}, {"z": np.full((2, 3), 1e-3)})
    assert report["max_rel_diff"] == pytest.approx(1e-3)


def test_compare_accepts_extra_outputs_and_another_dtype():
    ref = np.arange(6, dtype=np.float32)
    report = compare({"y": ref}, {"y": ref.astype(np.float16), "extra": np.zeros(3)})
    assert report["max_abs_diff"] == 0.0


def test_compare_refuses_another_layout_naming_the_output():
    ref = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(ValueError, match="output 'y' has shape \\[3, 2\\]"):
        compare({"y": ref}, {"y": ref.reshape(3, 2)})


def test_compare_missing_output_raises_value_error():
    with pytest.raises(ValueError, match="did not produce output 'probs'"):
        compare({"probs": np.ones((2, 3))}, {"logits": np.ones((2, 3))})


def test_compare_nothing_to_compare():
    report = compare({}, {})
    assert report["max_abs_diff"] == 0.0 and report["max_rel_diff"] == 0.0 and report["top1_agreement"] is None


def test_compare_nan_in_single_output_is_nan():
    ref = np.ones((2, 3))
    got = ref.copy()
    got[1, 1] = np.nan
    report = compare({"y": ref}, {"y": got})
    assert np.isnan(report["max_rel_diff"])


# --- parity_report -----------------------------------------------------------------------------------------


SPECS = [TensorSpec("x", "FP32", (-1, 6))]


def model(x: np.ndarray) -> np.ndarray:
    """A softmax classifier-like function of the input."""
    logits = x @ np.linspace(-1, 1, 6 * 4).reshape(6, 4) * 3
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(feeds):
    return {"probs": model(feeds["x"])}


def perturbed(relative: float):
    """A candidate whose max abs diff is exactly ``relative`` x the reference's spread (max - min)."""
    def candidate(feeds):
        ref = model(feeds["x"])
        out = ref.copy()
        out.flat[0] += relative * np.ptp(ref)
        return {"probs": out}
    return candidate


@pytest.mark.parametrize("weights, execution, expected", [
    ("fp32", "f32", 1e-3), ("fp16", "f32", 1e-2), ("fp16", "bf16", 3e-2), ("fp16", "f16", 3e-2),
    ("int8", "bf16", 0.25), ("int8", "f32", 0.25),
])
def test_tolerance_follows_weights_and_the_executed_precision(weights, execution, expected):
    assert tolerance_for(weights, execution) == pytest.approx(expected)


def test_an_unknown_execution_precision_gets_the_loosest_float_tolerance():
    assert tolerance_for("fp16", "unknown") == pytest.approx(3e-2)
    assert tolerance_for("fp32", "unknown") == pytest.approx(3e-2), "an fp32 IR not known to run in f32 is not held to 1e-3"


@pytest.mark.parametrize("compute, expected", [("float16", 3e-2), ("bfloat16", 6e-2)])
def test_a_mixed_precision_reference_is_only_as_exact_as_its_compute_dtype(compute, expected):
    """fp32 weights in f32 are held to 1e-3 against a float32 Keras model, but a mixed-precision model's own
    answers carry float16/bfloat16 rounding: the promise is that dtype's, and the report says why."""
    assert tolerance_for("fp32", "f32", compute) == pytest.approx(expected)
    assert tolerance_for("fp32", "f32", "float32") == pytest.approx(1e-3)
    report = parity_report(reference, reference, SPECS, "fp32", "f32", compute=compute)
    assert report["tolerance_max_rel_diff"] == pytest.approx(expected) and report["reference_compute_dtype"] == compute
    assert "reference_compute_dtype" not in parity_report(reference, reference, SPECS, "fp32", "f32")


def test_parity_report_identical_passes():
    report = parity_report(reference, reference, SPECS, "fp32")
    assert report["passed"] is True
    assert report["max_rel_diff"] == 0.0 and report["top1_agreement"] == 1.0
    assert report["samples"] == 8 and report["precision"] == "fp32"
    assert report["tolerance_max_rel_diff"] == tolerance_for("fp32", "f32") and report["execution_precision"] == "f32"
    assert "seed 0" in report["inputs"]
    json.dumps(report)  # goes into the manifest as is


def test_parity_report_feeds_both_models_the_same_seeded_batch():
    seen = []

    def spy(feeds):
        seen.append(feeds)
        return reference(feeds)

    parity_report(spy, spy, SPECS, "fp16", batch=3)
    assert len(seen) == 2 and seen[0]["x"].shape == (3, 6)
    np.testing.assert_array_equal(seen[0]["x"], seen[1]["x"])
    np.testing.assert_array_equal(seen[0]["x"], seeded_inputs(SPECS, 3)["x"])


@pytest.mark.parametrize("precision, execution, relative, passed", [  # the parity batch must stay within half the promise
    ("fp32", "f32", 0.4e-3, True), ("fp32", "f32", 0.6e-3, False), ("fp32", "f32", 1e-2, False),
    ("fp16", "f32", 0.45e-2, True), ("fp16", "f32", 0.55e-2, False),
    ("fp16", "bf16", 1e-2, True), ("fp16", "bf16", 1.4e-2, True), ("fp16", "bf16", 1.6e-2, False), ("fp16", "bf16", 0.2, False),
])
def test_parity_report_tolerance_per_precision(precision, execution, relative, passed):
    report = parity_report(reference, perturbed(relative), SPECS, precision, execution)
    assert report["max_rel_diff"] == pytest.approx(relative, rel=1e-6)
    assert report["passed"] is passed
    assert report["tolerance_max_rel_diff"] == tolerance_for(precision, execution)
    assert report["execution_precision"] == execution


def test_parity_report_int8_keeps_its_own_tolerance():
    assert parity_report(reference, reference, SPECS, "int8", "bf16")["tolerance_max_rel_diff"] == 0.25


@pytest.mark.parametrize("tolerance, passed", [(0.2, True), (0.05, False), (0.0, False)])
def test_parity_report_explicit_tolerance(tolerance, passed):
    report = parity_report(reference, perturbed(0.1), SPECS, "fp16", tolerance=tolerance)
    assert report["tolerance_max_rel_diff"] == tolerance
    assert report["passed"] is passed


def test_parity_report_explicit_zero_tolerance_passes_identical():
    assert parity_report(reference, reference, SPECS, "fp32", tolerance=0.0)["passed"] is True


def test_parity_report_nan_in_candidate_fails():
    def nan_candidate(feeds):
        out = reference(feeds)["probs"].copy()
        out[2, 1] = np.nan
        return {"probs": out}

    report = parity_report(reference, nan_candidate, SPECS, "fp16", tolerance=1e9)
    assert report["passed"] is False


def test_parity_report_inf_in_candidate_fails():
    def inf_candidate(feeds):
        out = reference(feeds)["probs"].copy()
        out[0, 0] = np.inf
        return {"probs": out}

    assert parity_report(reference, inf_candidate, SPECS, "fp16")["passed"] is False


def test_parity_report_nan_in_second_output_fails():
    def ref2(feeds):
        return {"a": reference(feeds)["probs"], "b": reference(feeds)["probs"]}

    def cand2(feeds):
        out = ref2(feeds)
        out["b"] = out["b"].copy()
        out["b"][0, 0] = np.nan
        return out

    report = parity_report(ref2, cand2, SPECS, "fp32")
    assert report["passed"] is False


# --- TensorSpec --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [IMAGE, TensorSpec("label", "BYTES", (-1,)), TensorSpec("s", "FP16", ())])
def test_tensor_spec_round_trip(spec):
    data = spec.to_dict()
    assert data == {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
    assert TensorSpec.from_dict(data) == spec
    assert TensorSpec.from_dict(json.loads(json.dumps(data))) == spec


def test_tensor_spec_from_dict_normalises_types():
    spec = TensorSpec.from_dict({"name": "x", "datatype": "FP32", "shape": ["-1", 3.0, np.int64(4)]})
    assert spec == TensorSpec("x", "FP32", (-1, 3, 4))
    assert all(type(d) is int for d in spec.shape)
    assert isinstance(spec.shape, tuple)
    hash(spec)  # frozen: usable as a key
