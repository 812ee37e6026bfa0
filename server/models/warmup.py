"""Warm-up: a few inferences at load, before a version is reported READY, so the first real call is not the
one that pays for lazy allocations and kernel selection.

Inputs are the upload's own samples when they were kept (``samples/inputs.npy``, one input), else zeros of the
signature's shape (batch 1, other dynamic dims the size the parity check used): either way real work through the real runner. Models with string
(BYTES) inputs are not warmed up: a meaningful string cannot be made up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kvserve.plugins.types import Runner, TensorSpec
from kvserve.proto.tensors import DATATYPES
from kvserve.server.uploads.parity_inputs import concrete_shape


def warm_up(runner: Runner, model_dir: Path, inputs: list[TensorSpec], count: int) -> int:
    """Run ``count`` inferences; returns how many ran (0 when the inputs cannot be synthesised)."""
    feeds = warmup_inputs(model_dir, inputs) if count > 0 else None
    if feeds is None:
        return 0
    for _ in range(count):
        runner.infer(feeds)
    return count


def warmup_inputs(model_dir: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray] | None:
    """One batch-1 feed per input, or None for a model with an input that cannot be made up."""
    if not inputs or any(spec.datatype not in DATATYPES or spec.datatype == "BYTES" for spec in inputs):
        return None
    if len(inputs) == 1:
        sample = _kept_sample(model_dir / "samples" / "inputs.npy", inputs[0])
        if sample is not None:
            return {inputs[0].name: sample}
    return {spec.name: np.zeros(concrete_shape(spec, spec.shape[0] if spec.shape and spec.shape[0] > 0 else 1),
                                DATATYPES[spec.datatype]) for spec in inputs}


def _kept_sample(path: Path, spec: TensorSpec) -> np.ndarray | None:
    """The first row of the kept parity samples, if it fits the input's signature."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    row = data[:1].astype(DATATYPES[spec.datatype], copy=False)
    if row.ndim != len(spec.shape) or any(d > 0 and d != r for d, r in zip(spec.shape, row.shape)):
        return None
    return np.ascontiguousarray(row)
