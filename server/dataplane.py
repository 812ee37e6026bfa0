"""Transport-neutral inference: validate inputs against the model's signature, run, pick outputs.

Servicers stay thin: they decode the wire format, call here, and encode what comes back.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kvserve.proto.tensors import datatype_of
from kvserve.plugins.types import TensorSpec
from kvserve.server.errors import InvalidArgument
from kvserve.server.models import ModelManager, ModelVersion


def describe_specs(specs: list[TensorSpec]) -> str:
    return ", ".join(f"'{s.name}' ({s.datatype} {list(s.shape)})" for s in specs)


def validate_inputs(model: ModelVersion, inputs: Mapping[str, np.ndarray], max_batch_size: int = 0) -> None:
    """Every input present, known, of the right datatype and a compatible shape, before any compute."""
    expected = {spec.name: spec for spec in model.inputs}
    unknown = [name for name in inputs if name not in expected]
    if unknown:
        raise InvalidArgument(f"model '{model.name}' has no input '{unknown[0]}'; its inputs are {describe_specs(model.inputs)}")
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidArgument(f"input '{missing[0]}' is missing; model '{model.name}' needs {describe_specs(model.inputs)}")
    batch_sizes = set()
    for name, array in inputs.items():
        spec = expected[name]
        got = datatype_of(array)
        if got != spec.datatype:
            raise InvalidArgument(f"input '{name}' must be {spec.datatype}, got {got}; convert it before sending")
        if array.ndim != len(spec.shape) or any(d >= 0 and d != g for d, g in zip(spec.shape, array.shape)):
            raise InvalidArgument(f"input '{name}' has shape {list(array.shape)}, model '{model.name}' expects {list(spec.shape)} (-1 = any size)")
        if array.size == 0:
            raise InvalidArgument(f"input '{name}' of shape {list(array.shape)} is empty; send at least one item")
        if spec.shape and spec.shape[0] < 0:
            batch_sizes.add(array.shape[0])
    if len(batch_sizes) > 1:
        raise InvalidArgument(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes and max_batch_size and max(batch_sizes) > max_batch_size:
        raise InvalidArgument(f"batch of {max(batch_sizes)} exceeds this server's max batch size {max_batch_size} "
                              "(ModelConfig max_batch_size); split the request")


class DataPlane:
    def __init__(self, manager: ModelManager, max_batch_size: int = 0) -> None:
        self.manager = manager
        self.max_batch_size = max_batch_size

    def infer(self, name: str, version: str, inputs: Mapping[str, np.ndarray], requested: list[str] | None = None
              ) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        model = self.manager.get(name, version)
        validate_inputs(model, inputs, self.max_batch_size)
        if requested:
            known = {spec.name for spec in model.outputs}
            for output in requested:
                if output not in known:
                    raise InvalidArgument(f"model '{name}' has no output '{output}'; its outputs are {describe_specs(model.outputs)}")
        assert model.runner is not None
        return model, model.runner.infer(dict(inputs), requested or None)
