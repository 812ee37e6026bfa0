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
