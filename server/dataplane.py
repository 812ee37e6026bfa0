"""Transport-neutral inference: decode image bytes, validate against the signature, run, pick outputs, and
reduce outputs to top-k classes when asked.

Servicers stay thin: they decode the wire format, call here, and encode what comes back. ``_run`` is also where
an inference waits for a slot (bounded per model: admission), joins its model's batch when batching is on,
gives up when its deadline passes, and is timed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping

import numpy as np

from kvserve.proto import classes
from kvserve.proto.echo import short
from kvserve.proto.images import MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS, ImageError, Preprocess, decoded_pixels, image_shape, to_input
from kvserve.plugins.types import TensorSpec, infer_async
from kvserve.proto.tensors import DATATYPES, datatype_of
from kvserve.server.ops import faults, metrics
from kvserve.server.errors import DeadlineExceeded, InvalidArgument
from kvserve.server.batching import BatchPolicy, Batcher, batchable
from kvserve.server.ops.limits import PIXELS, Admission, ImageLimits, PixelBudget, deadline_passed
from kvserve.server.models.manager import ModelManager, ModelVersion


def describe_specs(specs: list[TensorSpec]) -> str:
    return ", ".join(f"'{s.name}' ({s.datatype} {list(s.shape)})" for s in specs)


def decode_images(model: ModelVersion, inputs: Mapping[str, np.ndarray], preprocess: Preprocess | None = None,
                  max_batch_size: int = 0, max_image_pixels: int = MAX_IMAGE_PIXELS,
                  max_request_pixels: int = MAX_REQUEST_PIXELS, budget: PixelBudget = PIXELS) -> dict[str, np.ndarray]:
    """BYTES inputs sent to an image input (one encoded image per element, shape [N] or [N, 1]) become the
    model's tensor, decoded and preprocessed per the manifest (as OpenVINO Model Server does for binary
    inputs). Other inputs pass through untouched.

    Bounded before anything is decoded: the element count against the batch limit, then every header against
    the per-image and per-request pixel budgets (the larger of the decoded size and the model's target size),
    and the whole decode holds that many pixels of the process-wide ``budget``."""
    specs = {spec.name: spec for spec in model.inputs}
    preprocess = preprocess or Preprocess.from_dict(model.manifest.get("preprocess"))
    decoded = dict(inputs)
    for name, array in inputs.items():
        spec = specs.get(name)
        if spec is None or array.dtype != object or spec.datatype == "BYTES" or image_shape(spec.shape) is None:
            continue
        shown = short(name)
        if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
            raise InvalidArgument(f"input '{shown}': send encoded images as a BYTES tensor of shape [N] or [N, 1], got {list(array.shape)}")
        count = int(array.shape[0])
        if count == 0:
            raise InvalidArgument(f"input '{shown}' holds no images; send at least one")
        fixed = spec.shape[0] if spec.shape[0] > 0 else 0
        if fixed and count != fixed:
            raise InvalidArgument(f"input '{shown}' holds {count} images, model '{model.name}' takes exactly {fixed}")
        if max_batch_size and count > max_batch_size:
            raise InvalidArgument(f"input '{shown}' holds {count} images, more than this server's max batch size "
                                  f"{max_batch_size}; split the request")
        height, width, channels = image_shape(spec.shape)  # type: ignore[misc]
        target = max(height, 1) * max(width, 1)
        items = [_image_bytes(shown, index, item) for index, item in enumerate(array.reshape(-1))]
        charged = 0
        for index, item in enumerate(items):
            try:
                pixels = decoded_pixels(item, height, width, channels)
            except ImageError as error:
                raise InvalidArgument(f"input '{shown}' element {index}: {error}") from None
            if pixels > max_image_pixels:
                raise InvalidArgument(f"input '{shown}' element {index}: the image has {pixels} pixels, more than the "
                                      f"{max_image_pixels} kvd decodes; resize it before sending")
            charged += max(pixels, target)
            if charged > max_request_pixels:
                raise InvalidArgument(f"input '{shown}': the images up to element {index} add up to more than the "
                                      f"{max_request_pixels} pixels one request may decode; send fewer or smaller images")
        with budget.hold(charged):
            images = []
            for index, item in enumerate(items):
                try:
                    images.append(to_input(item, spec.shape, preprocess, max_image_pixels))
                except ImageError as error:
                    raise InvalidArgument(f"input '{shown}' element {index}: {error}") from None
            decoded[name] = np.stack(images).astype(DATATYPES[spec.datatype], copy=False)
    return decoded


def _image_bytes(name: str, index: int, item: object) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    raise InvalidArgument(f"input '{name}' element {index}: expected encoded image bytes, got {type(item).__name__}")


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


class Served:
    """What the data plane derives once per loaded version (not per call): spec tables, parsed preprocessing,
    metric children, the batcher."""

    __slots__ = ("model", "inputs", "outputs", "manifest", "preprocess", "images", "queue_metric", "infer_metric",
                 "batcher", "policy")

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.inputs = {spec.name: spec for spec in model.inputs}
        self.outputs = {spec.name for spec in model.outputs}
        self.images = any(spec.datatype != "BYTES" and image_shape(spec.shape) is not None for spec in model.inputs)
        self.manifest: Any = None
        self.preprocess: Preprocess | None = None
        self.policy: BatchPolicy | None = None
        labels = (model.name, str(model.version))
        self.queue_metric = metrics.QUEUE_SECONDS.labels(*labels)
        self.infer_metric = metrics.INFERENCE_SECONDS.labels(*labels)
        self.batcher: Batcher | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest's settings when it was replaced (kvctl configure swaps the dict)."""
        manifest = self.model.manifest
        if manifest is self.manifest:
            return
        self.manifest = manifest
        self.preprocess = Preprocess.from_dict(manifest.get("preprocess"))
        policy = BatchPolicy.from_settings(manifest.get("dynamic_batching"))
        self.policy = policy if policy is not None and batchable(self.model.inputs, self.model.outputs) else None
        if self.batcher is not None and self.batcher.policy != self.policy:
            self.batcher = None  # the old one drains what it holds and ends


class DataPlane:
    """The one place that validates and runs inference, for every front door (gRPC, HTTP, TF Serving).

    Lives on the event loop: lookups of loaded versions are in memory, anything that may block (loading an
    older version on demand, decoding images) runs off the loop.
    """

    def __init__(self, manager: ModelManager, admission: Admission | None = None, max_batch_size: int = 0,
                 images: ImageLimits | None = None) -> None:
        self.manager = manager
        self.admission = admission or Admission(max_queue=32)
        self.max_batch_size = max_batch_size
        self.images = images or ImageLimits()
        self.pixels = PixelBudget(self.images.total)
        self._served: dict[tuple[str, str], Served] = {}
        manager.subscribe(self._forget)

    def _forget(self, name: str) -> None:
        """A model's versions changed (any thread): look it up afresh next time."""
        self._served = {key: served for key, served in self._served.items() if key[0] != name and name}

    async def lookup(self, name: str, version: str) -> Served:
        served = self._served.get((name, version))
        if served is not None and not served.model.retired and served.model.runner is not None:
            served.refresh()
            return served
        model = await asyncio.to_thread(self.manager.get, name, version)  # may read the disk or load a version
        served = Served(model)
        self._served[(name, version)] = served
        return served

    async def infer(self, name: str, version: str, inputs: Mapping[str, np.ndarray], requested: list[str] | None = None,
                    classification: Mapping[str, int] | None = None, deadline: float | None = None,
                    finish: Callable[[ModelVersion, dict[str, np.ndarray]], Any] | None = None) -> tuple[ModelVersion, Any]:
        """Run one request. ``classification`` maps output names to k (top-k classes instead of scores);
        ``deadline`` is a ``time.monotonic()`` instant after which nobody awaits the answer (DEADLINE_EXCEEDED).
        Returns the model and its outputs, or what ``finish(model, outputs)`` makes of them: ``finish`` may be
        handed views of the runner's own output memory (a front door serializes the response there, the one copy
        out), so it must not keep the arrays."""
        served = await self.lookup(name, version)
        model = served.model
        encoded = served.images and any(array.dtype == object for array in inputs.values())
        if not encoded:
            validate_inputs(model, inputs, self.max_batch_size)
        if classification:
            classification = dict(classification)
            if "" in classification:  # request-level top_k without named outputs: the model's first output
                classification[model.outputs[0].name] = classification.pop("")
        for output in list(requested or ()) + list(classification or ()):
            if output not in served.outputs:
                raise InvalidArgument(f"model '{name}' has no output '{output}'; its outputs are {describe_specs(model.outputs)}")
        if finish is None:
            outputs = await self._run(served, inputs, requested, deadline, encoded)
            return model, classify(model, outputs, classification) if classification else outputs

        def done(outputs: dict[str, np.ndarray]) -> Any:
            return finish(model, classify(model, outputs, classification) if classification else outputs)

        return model, await self._run(served, inputs, requested, deadline, encoded, done)

    async def _run(self, served: Served, inputs: Mapping[str, np.ndarray], requested: list[str] | None,
                   deadline: float | None, encoded: bool = False, finish: Callable[[dict[str, np.ndarray]], Any] | None = None) -> Any:
        """On a leased runner, behind the model's bounded queue (or its batcher)."""
        try:
            return await self._admitted(served, inputs, requested, deadline, encoded, finish)
        except DeadlineExceeded:
            metrics.DROPPED.labels(served.model.name, "deadline").inc()
            raise
        except asyncio.CancelledError:  # gRPC cancels the call when the client leaves or its deadline passes
            expired = deadline is not None and time.monotonic() >= deadline
            metrics.DROPPED.labels(served.model.name, "deadline" if expired else "cancelled").inc()
            raise

    async def _decode(self, served: Served, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded images -> the model's tensor, off the loop, within this server's pixel limits; then validated."""
        limits = self.images
        decoded = await asyncio.to_thread(decode_images, served.model, inputs, served.preprocess, self.max_batch_size,
                                          limits.image, limits.request, self.pixels)
        validate_inputs(served.model, decoded, self.max_batch_size)
        return decoded

    async def _admitted(self, served: Served, inputs: Mapping[str, np.ndarray], requested: list[str] | None,
                        deadline: float | None, encoded: bool = False,
                        finish: Callable[[dict[str, np.ndarray]], Any] | None = None) -> Any:
        """Encoded images are decoded inside the model's admission slot: a flood of image requests to one model
        waits in (and overflows) that model's bounded queue before any of it is decoded."""
        model = served.model
        with self.manager.lease(model) as runner:
            line = self.admission.queue(model.name, runner)
            if served.policy is not None and faults.active("slow-infer"):
                await _slow_model(model.name, deadline)
            if encoded and served.policy is not None:  # decode in a slot, then join a batch like any other call
                await self.admission.acquire(model.name, line, _nbytes(inputs), deadline)
                try:
                    inputs = await self._decode(served, inputs)
                finally:
                    self.admission.release(line)
            if served.policy is not None:
                if served.batcher is None or served.batcher.runner is not runner:
                    served.batcher = Batcher(model.name, runner, served.policy, self.admission, line)
                started = time.perf_counter()
                outputs = await served.batcher.infer(inputs, _rows(inputs), deadline)
                served.infer_metric.observe(time.perf_counter() - started)
                outputs = {name: outputs[name] for name in requested} if requested else outputs
                return outputs if finish is None else finish(outputs)
            queued_s = await self.admission.acquire(model.name, line, _nbytes(inputs), deadline)
            try:
                if faults.active("slow-infer"):  # a slow model holds its slot, as a real one would
                    await _slow_model(model.name, deadline)
                if encoded:
                    inputs = await self._decode(served, inputs)
                started = time.perf_counter()
                answer = await infer_async(runner, dict(inputs), requested or None, finish)  # finish(outputs) with finish
                served.infer_metric.observe(time.perf_counter() - started)
            finally:
                self.admission.release(line)
            served.queue_metric.observe(queued_s)
            return answer


async def _slow_model(name: str, deadline: float | None) -> None:
    """The ``slow-infer`` test fault: the model takes that long; a deadline passed meanwhile drops the call."""
    await asyncio.to_thread(faults.pause, "slow-infer")
    if deadline is not None and time.monotonic() >= deadline:
        raise deadline_passed(name)


def _nbytes(inputs: Mapping[str, np.ndarray]) -> int:
    """Memory a queued request holds: array bytes, and the bytes of each element of BYTES (object) arrays."""
    total = 0
    for array in inputs.values():
        if array.dtype == object:
            total += sum(len(item) if isinstance(item, (bytes, bytearray, memoryview, str)) else 8 for item in array.flat)
        else:
            total += array.nbytes
    return total


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])
