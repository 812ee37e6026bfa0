"""Transport-neutral inference: validate inputs against the model's signature, run, pick outputs.

Servicers stay thin: they decode the wire format, call here, and encode what comes back. ``_run`` is also where
an inference waits for a slot (bounded per model), is dropped when its caller has gone, and is timed.
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from kvserve.proto.tensors import datatype_of
from kvserve.plugins.types import TensorSpec
from kvserve.server import faults, metrics
from kvserve.server.errors import InvalidArgument
from kvserve.server.limits import Call, InferGate, dropped, gone
from kvserve.server.models import ModelManager, ModelVersion


def describe_specs(specs: list[TensorSpec]) -> str:
    return ", ".join(f"'{s.name}' ({s.datatype} {list(s.shape)})" for s in specs)


def validate_inputs(model: ModelVersion, inputs: Mapping[str, np.ndarray]) -> None:
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
        if spec.shape and spec.shape[0] < 0:
            batch_sizes.add(array.shape[0])
    if len(batch_sizes) > 1:
        raise InvalidArgument(f"inputs disagree on the batch size: {sorted(batch_sizes)}")


class DataPlane:
    def __init__(self, manager: ModelManager, gate: InferGate | None = None) -> None:
        self.manager = manager
        self.gate = gate or InferGate(max_queue=32)

    def infer(self, name: str, version: str, inputs: Mapping[str, np.ndarray], requested: list[str] | None = None,
              call: Call | None = None) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        """Run one request; ``call`` (the gRPC context) lets work for a caller that went away be dropped."""
        model = self.manager.get(name, version)
        validate_inputs(model, inputs)
        if requested:
            known = {spec.name for spec in model.outputs}
            for output in requested:
                if output not in known:
                    raise InvalidArgument(f"model '{name}' has no output '{output}'; its outputs are {describe_specs(model.outputs)}")
        return model, self._run(model, inputs, requested, call)

    def _run(self, model: ModelVersion, inputs: Mapping[str, np.ndarray], requested: list[str] | None,
             call: Call | None) -> dict[str, np.ndarray]:
        """On a leased runner, behind the model's bounded queue; dropped if nobody awaits the answer any more."""
        with self.manager.lease(model) as runner, self.gate.slot(model.name, runner, call) as queued_s:
            faults.pause("slow-infer")
            reason = gone(call)
            if reason:
                metrics.DROPPED.labels(model.name, reason).inc()
                raise dropped(reason)
            started = time.perf_counter()
            outputs = runner.infer(dict(inputs), requested or None)
            labels = (model.name, str(model.version))
            metrics.QUEUE_SECONDS.labels(*labels).observe(queued_s)
            metrics.INFERENCE_SECONDS.labels(*labels).observe(time.perf_counter() - started)
            return outputs
