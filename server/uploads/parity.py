"""Does the converted model answer like the original? Realistic inputs (parity_inputs), both models, figures.

Figures per output: max abs diff, max rel diff (abs diff over the output's spread, max - min, so near-zero
elements do not dominate and a nearly flat output cannot hide a wrong model behind a tiny absolute error), and
top-1 agreement over the batch. Pure numpy, so it is cheap to test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kvserve.plugins.types import TensorSpec
from kvserve.proto.tensors import DATATYPES  # the one v2 datatype -> numpy table
from kvserve.server.uploads.parity_inputs import degenerate, fixed_batch, run_chunked

# What the product promises, as a max rel diff (abs diff over the output's spread), by what actually ran: the
# weights stored in the IR and the precision OpenVINO executed in (read from the compiled model, never assumed
# from the CPU). f32 execution of fp32 weights matches to accumulation order (~1e-4 on a deep ResNet with
# caffe-style inputs); fp16 weights move outputs by up to ~1e-3 of
# their range; bf16 execution (the default on every CPU with avx512_bf16 or AMX) and f16 execution by up to
# ~1e-2; int8 by up to ~1e-1 (judged on the calibration set, where top-1 agreement is recorded too).
WEIGHT_TOLERANCES: dict[str, float] = {"fp32": 1e-3, "fp16": 1e-2, "int8": 0.25}
EXECUTION_TOLERANCES: dict[str, float] = {"f32": 1e-3, "bf16": 3e-2, "f16": 3e-2}
# The promise holds for inputs the check never saw, so the parity batch must stay within this fraction of it
# (a user-given --tolerance is taken as is). Measured: VGG16 in bf16 drifted 2.5x further on fresh inputs.
HEADROOM = 0.5


# A mixed-precision model (keras.mixed_precision policy 'mixed_float16' / 'mixed_bfloat16') computes in float16 or
# bfloat16 in Keras itself: its reference is only that exact, whatever precision the converted model runs in.
# float16 keeps 11 significant bits (as f16 execution); bfloat16 only 8, and unlike OpenVINO's bf16 execution
# Keras keeps every activation in it: a small Conv1D model's own bfloat16 rounding measured ~2e-2 of its range
# against any float32 run, so its promise is twice bf16 execution's.
COMPUTE_TOLERANCES: dict[str, float] = {"float32": 0.0, "float16": 3e-2, "bfloat16": 6e-2}


def tolerance_for(weights: str, execution: str, compute: str = "float32") -> float:
    """The max rel diff allowed for ``weights`` (fp32, fp16, int8) executed in ``execution`` (f32, bf16, f16),
    against a reference that computes in ``compute`` (the Keras model's compute dtype); an execution precision or
    compute dtype this table does not know gets the loosest float tolerance."""
    return max(WEIGHT_TOLERANCES.get(weights, WEIGHT_TOLERANCES["fp16"]),
               EXECUTION_TOLERANCES.get(execution, max(EXECUTION_TOLERANCES.values())),
               COMPUTE_TOLERANCES.get(compute, max(COMPUTE_TOLERANCES.values())))


# Rows per call when running both models: a calibration set of large images does not fit in one batch.
CHUNK = 16


def seeded_inputs(specs: list[TensorSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Reproducible inputs: dynamic batch -> ``batch``, other dynamic dims -> 16; floats uniform in [0, 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = [batch if i == 0 and d < 0 else (16 if d < 0 else d) for i, d in enumerate(spec.shape)]
        dtype = DATATYPES[spec.datatype]
        if spec.datatype == "BYTES":  # strings: short sentences of common words
            words = np.array(["the", "a", "model", "fast", "answer", "keras", "good", "not", "very", "hello", "world"])
            feeds[spec.name] = np.array([" ".join(rng.choice(words, size=int(rng.integers(1, 6)))).encode()
                                         for _ in range(int(np.prod(shape)))], dtype=object).reshape(shape)
        elif np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) > 0.5
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Worst-case figures over all outputs, plus per-output detail. String outputs must match exactly."""
    per_output = {}
    for name, ref in reference.items():
        if name not in candidate:
            raise ValueError(f"converted model did not produce output '{name}'")
        ref_array, got_array = np.asarray(ref), np.asarray(candidate[name])
        if got_array.shape != ref_array.shape:
            raise ValueError(f"converted model's output '{name}' has shape {list(got_array.shape)}, the original's {list(ref_array.shape)}")
        if ref_array.dtype.kind in "OUS" or got_array.dtype.kind in "OUS":
            equal = np.vectorize(_same_text, otypes=[bool])(ref_array, got_array) if ref_array.size else np.ones(0, bool)
            worst = 0.0 if bool(np.all(equal)) else float("inf")
            per_output[name] = {"max_abs_diff": worst, "max_rel_diff": worst, "exact_match": float(np.mean(equal)) if equal.size else 1.0}
            continue
        ref64, got64 = ref_array.astype(np.float64), got_array.astype(np.float64)
        diff = np.abs(ref64 - got64)
        scale = _spread(ref64)
        entry = {
            "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "max_rel_diff": max(_rel(diff, scale), _worst_group(ref64, diff, scale)),
        }
        if ref64.ndim >= 2 and ref64.shape[-1] > 1:
            entry["top1_agreement"] = float(np.mean(ref64.argmax(-1) == got64.argmax(-1)))
        per_output[name] = entry
    return {
        "max_abs_diff": _worst(e["max_abs_diff"] for e in per_output.values()),
        "max_rel_diff": _worst(e["max_rel_diff"] for e in per_output.values()),
        "top1_agreement": min((e["top1_agreement"] for e in per_output.values() if "top1_agreement" in e), default=None),
        "outputs": per_output,
    }


# A client checks a few rows at a time, each batch against its own spread; a large parity batch with one extreme
# row has a wide spread that hides errors elsewhere (MobileNetV3Small, fp16 weights: 2e-3 over 64 rows, 1.5e-2
# over 4 fresh ones). So rows are also judged GROUP at a time by the group's own spread, never taken below
# GROUP_FLOOR of the whole batch's (a group of near-equal answers must not turn float noise into a failure).
GROUP, GROUP_FLOOR = 4, 0.25


def _spread(reference: np.ndarray) -> float:
    """The scale a difference is relative to: the reference's range, else its magnitude (0 for all zeros)."""
    if not reference.size:
        return 0.0
    spread = float(np.ptp(reference))
    return spread if spread > 0 else float(np.max(np.abs(reference)))


def _rel(diff: np.ndarray, scale: float) -> float:
    if not diff.size:
        return 0.0
    return float(diff.max() / scale) if scale > 0 else float(diff.max())


def _worst_group(reference: np.ndarray, diff: np.ndarray, scale: float) -> float:
    """The worst max rel diff over groups of GROUP rows, each relative to its own spread (floored)."""
    if reference.ndim == 0 or reference.shape[0] <= GROUP or scale <= 0:
        return 0.0
    return max(_rel(diff[i : i + GROUP], max(_spread(reference[i : i + GROUP]), GROUP_FLOOR * scale))
               for i in range(0, reference.shape[0], GROUP))


def _same_text(a: Any, b: Any) -> bool:
    as_bytes = [x.encode() if isinstance(x, str) else bytes(x) for x in (a, b)]
    return as_bytes[0] == as_bytes[1]


def _worst(values: Any) -> float:
    """The largest value, where NaN counts as worse than anything (Python's max() would skip it)."""
    return max(values, key=lambda v: (np.isnan(v), v), default=0.0)


def parity_report(
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    candidate: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    inputs: list[TensorSpec],
    precision: str,
    execution: str = "f32",
    batch: int = 8,
    tolerance: float | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    feeds_source: str = "",
    reference_outputs: dict[str, np.ndarray] | None = None,
    weak: str | None = None,
    compute: str = "float32",
) -> dict[str, Any]:
    """Run both models on ``feeds`` (seeded inputs when none) and judge the candidate.

    ``verdict`` is ``pass`` (max rel diff within the tolerance for ``precision`` weights executed in
    ``execution``, unless ``tolerance`` overrides it), ``fail``, or ``weak``: the reference's outputs do not vary
    across the batch (or are NaN/inf), so agreement proves nothing; a weak check is never ``passed``.
    ``reference_outputs`` saves running the original again when the caller already has them. ``compute`` is the
    original's own compute dtype (float16/bfloat16 for a mixed-precision Keras model: the reference is only that
    exact, and the tolerance says so).
    """
    if feeds is None:
        feeds, feeds_source = seeded_inputs(inputs, batch), "seeded uniform [0, 1), seed 0"
    chunk = min(CHUNK, fixed_batch(inputs) or CHUNK)
    expected = reference_outputs if reference_outputs is not None else run_chunked(reference, feeds, chunk)
    report = compare(expected, run_chunked(candidate, feeds, chunk))
    weak = weak or degenerate(expected)
    limit = tolerance_for(precision, execution, compute) if tolerance is None else tolerance
    # int8 is judged on the very data it was calibrated for (its own check): no headroom there
    checked = limit * HEADROOM if tolerance is None and precision != "int8" else limit
    within = bool(report["max_rel_diff"] <= checked)
    samples = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
    report.update({"samples": samples, "inputs": feeds_source, "precision": precision, "execution_precision": execution,
                   "tolerance_max_rel_diff": limit, "checked_max_rel_diff": checked, "within_tolerance": within, "weak": weak,
                   "verdict": "weak" if weak else ("pass" if within else "fail"), "passed": within and not weak})
    if compute != "float32":
        report["reference_compute_dtype"] = compute
    return report


def sample_feeds(inputs: list[TensorSpec], npy_path: str | None = None, image_paths: list[str] | None = None,
                 preprocess: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], str]:
    """User-given parity inputs for a single-input model: a .npy batch (used as is), or images decoded to its
    input size and preprocessed as the manifest says."""
    if len(inputs) != 1:
        raise ValueError(f"sample inputs need a single-input model; this one has {len(inputs)} inputs")
    spec = inputs[0]
    dtype = DATATYPES[spec.datatype]
    if npy_path:
        array = np.load(npy_path, allow_pickle=False)
        if array.ndim == len(spec.shape) - 1:
            array = array[None, ...]
        if array.ndim != len(spec.shape) or any(d >= 0 and d != a for d, a in zip(spec.shape, array.shape)):
            raise ValueError(f"sample array of shape {list(array.shape)} does not fit input '{spec.name}' {list(spec.shape)}")
        return {spec.name: array.astype(dtype)}, f"user samples (.npy, {array.shape[0]})"
    from kvserve.proto.images import Preprocess, to_input  # Pillow and numpy only

    steps = Preprocess.from_dict(preprocess)
    images = [to_input(Path(p), spec.shape, steps) for p in image_paths or []]
    return {spec.name: np.stack(images).astype(dtype)}, f"user samples ({len(images)} images)"
