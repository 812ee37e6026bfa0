"""INT8 post-training quantization of a converted IR with NNCF; runs in the converter child only.

NNCF 3.x quantizes the OpenVINO model (not the TF one), so an int8 upload is converted with FP32 weights
first and then quantized here. Calibration uses the user's inputs (a .npy batch or images decoded like
``kvctl infer`` does); without them, seeded synthetic inputs, and the upload says so loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kvserve.plugins.types import ModelRejected, TensorSpec
from kvserve.server.uploads.parity import sample_feeds, seeded_inputs

# NNCF's own default subset size; more samples cost time and memory without changing the ranges much.
MAX_CALIBRATION_SAMPLES = 300
SYNTHETIC_SAMPLES = 32
SYNTHETIC_SEED = 1234
SYNTHETIC_WARNING = (
    "WARNING: no calibration data was given, so INT8 was calibrated on seeded synthetic inputs (uniform [0, 1)); "
    "its accuracy on real inputs is unknown. Upload again with --calibration DIR|FILE.npy of real inputs."
)


def calibration_feeds(inputs: list[TensorSpec], npy: str | None, images: list[str] | None,
                      preprocess: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], str, bool]:
    """(feeds, where they came from, synthetic?) with at most MAX_CALIBRATION_SAMPLES rows; calibration images
    go through the model's preprocessing, as served images will."""
    if not npy and not images:
        feeds = seeded_inputs(inputs, SYNTHETIC_SAMPLES, seed=SYNTHETIC_SEED)
        return feeds, f"seeded synthetic uniform [0, 1), {SYNTHETIC_SAMPLES} samples, seed {SYNTHETIC_SEED}", True
    try:
        feeds, source = sample_feeds(inputs, npy, images, preprocess)
    except (ValueError, OSError) as error:
        raise ModelRejected(f"the calibration data cannot be used: {error}") from None
    feeds = {name: array[:MAX_CALIBRATION_SAMPLES] for name, array in feeds.items()}
    return feeds, source.replace("user samples", "user calibration data"), False


def quantize_ir(fp32_xml: Path, feeds: dict[str, np.ndarray], out_xml: Path) -> dict[str, Any]:
    """Quantize the FP32 IR at ``fp32_xml`` on ``feeds`` (batch first) and save it as ``out_xml``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(fp32_xml)
    count = int(next(iter(feeds.values())).shape[0])
    samples = [{name: array[i : i + 1] for name, array in feeds.items()} for i in range(count)]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=count)
    ov.save_model(quantized, out_xml, compress_to_fp16=False)
    return {"tool": f"nncf {nncf.__version__}", "calibration_samples": count}


SATURATED_ROW = 0.999      # a probability row this confident is "saturated"
SATURATED_SHARE = 0.9      # warn when this share of calibration rows is saturated
SATURATION_ROWS = 32       # rows of the calibration set the check runs the original model on


def calibration_warnings(reference: Any, feeds: dict[str, np.ndarray], from_images: bool, preprocess: dict[str, Any] | None
                         ) -> list[str]:
    """Why an INT8 model that passed parity may still be bad: raw-pixel calibration, saturated outputs.

    Parity compares INT8 with the original on the calibration set; when the original is saturated there (every
    row ~100 % one class, typical of 0-255 pixels fed to a model trained on [0, 1]), any INT8 model agrees with
    it, so passing proves nothing. Both cases are reported, never silently served.
    """
    warnings = []
    mode = (preprocess or {}).get("mode", "none")
    if from_images and mode == "none":
        warnings.append("WARNING: the calibration images were fed as raw 0-255 pixels (preprocessing 'none'); if the model was "
                        "trained on scaled inputs, upload again with --preprocess unit|inception|caffe|torch")
    rows = {name: array[:SATURATION_ROWS] for name, array in feeds.items()}
    try:
        outputs = reference(rows)
    except Exception:  # noqa: BLE001 - the check is advice; parity already ran the model on these feeds
        return warnings
    for name, value in outputs.items():
        array = np.asarray(value, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] < 2 or not np.all((array >= 0) & (array <= 1)):
            continue  # only probability-like outputs (batch, classes) can be judged this way
        share = float(np.mean(array.max(axis=1) >= SATURATED_ROW))
        if share >= SATURATED_SHARE:
            warnings.append(f"WARNING: output '{name}' is saturated on the calibration data ({share:.0%} of rows >= "
                            f"{SATURATED_ROW:.1%} one class), so INT8 parity on it proves little; check the model's "
                            "preprocessing (--preprocess) and the calibration inputs")
    return warnings
