"""Transport-neutral inference: decode image bytes, validate against the signature, run, pick outputs, and
reduce outputs to top-k classes when asked.

Servicers stay thin: they decode the wire format, call here, and encode what comes back.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kvserve.client import classes
from kvserve.client.preprocessing import ImageError, Preprocess, image_shape, to_input
from kvserve.plugins.types import TensorSpec
from kvserve.proto.tensors import DATATYPES, datatype_of
from kvserve.server.errors import InvalidArgument
from kvserve.server.models import ModelManager, ModelVersion


def describe_specs(specs: list[TensorSpec]) -> str:
    return ", ".join(f"'{s.name}' ({s.datatype} {list(s.shape)})" for s in specs)


def decode_images(model: ModelVersion, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BYTES inputs sent to an image input (one encoded image per element, shape [N] or [N, 1]) become the
    model's tensor, decoded and preprocessed per the manifest (as OpenVINO Model Server does for binary
    inputs). Other inputs pass through untouched."""
    specs = {spec.name: spec for spec in model.inputs}
    preprocess = Preprocess.from_dict(model.manifest.get("preprocess"))
    decoded = dict(inputs)
    for name, array in inputs.items():
        spec = specs.get(name)
        if spec is None or array.dtype != object or spec.datatype == "BYTES" or image_shape(spec.shape) is None:
            continue
        if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
            raise InvalidArgument(f"input '{name}': send encoded images as a BYTES tensor of shape [N] or [N, 1], got {list(array.shape)}")
        images = []
        for index, item in enumerate(array.reshape(-1)):
            try:
                images.append(to_input(bytes(item), spec.shape, preprocess))
            except ImageError as error:
                raise InvalidArgument(f"input '{name}' element {index}: {error}") from None
        decoded[name] = np.stack(images).astype(DATATYPES[spec.datatype], copy=False)
    return decoded


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


def classify(model: ModelVersion, outputs: dict[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Replace each output named in ``counts`` by its top-k classes (Triton's classification extension)."""
    labels = model.manifest.get("labels")
    result = dict(outputs)
    for name, k in counts.items():
        if k < 1:
            raise InvalidArgument(f"output '{name}': classification count must be at least 1, got {k}")
        result[name] = classes.encode(classes.top_k(outputs[name], k, labels))
    return result


class DataPlane:
    def __init__(self, manager: ModelManager, max_batch_size: int = 0) -> None:
        self.manager = manager
        self.max_batch_size = max_batch_size

    def infer(self, name: str, version: str, inputs: Mapping[str, np.ndarray], requested: list[str] | None = None,
              classification: Mapping[str, int] | None = None) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        """Run the model. ``classification`` maps output names to k (top-k classes instead of scores)."""
        model = self.manager.get(name, version)
        inputs = decode_images(model, inputs)
        validate_inputs(model, inputs, self.max_batch_size)
        classification = dict(classification or {})
        if "" in classification:  # request-level top_k without named outputs: the model's first output
            classification[model.outputs[0].name] = classification.pop("")
        known = {spec.name for spec in model.outputs}
        for output in list(requested or []) + list(classification):
            if output not in known:
                raise InvalidArgument(f"model '{name}' has no output '{output}'; its outputs are {describe_specs(model.outputs)}")
        assert model.runner is not None
        outputs = model.runner.infer(dict(inputs), requested or None)
        return model, classify(model, outputs, classification) if classification else outputs
