"""Typed shapes of what plugins register: converters (upload -> IR) and backends (IR -> runner).

Kept free of TensorFlow and OpenVINO imports so the daemon and tests can import it cheaply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the v2 protocol describes it (shape uses -1 for a dynamic dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass
class ConversionOptions:
    """What the user asked for at upload time that a converter must honour."""

    precision: str = "fp16"
    allow_unsafe_deserialization: bool = False


Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class SourceModel:
    """An uploaded model, loaded: its tensor signature and a way to run the original (for parity checks).

    ``handle`` is the converter's own object (e.g. the Keras model) passed back to ``convert``.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference: Predict
    handle: Any = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Converter(Protocol):
    """Reads an uploaded model (one of ``formats``) and converts it to OpenVINO IR.

    ``load`` raises ModelRejected / UnsafeModel; ``convert`` raises ConversionFailed naming the op or layer,
    in which case the daemon may still serve the original through a framework backend (``TF``).
    """

    name: str
    formats: tuple[str, ...]

    def load(self, source: Path, fmt: str, options: ConversionOptions) -> SourceModel:
        ...

    def convert(self, model: SourceModel, out_dir: Path, options: ConversionOptions) -> Path:
        """Write the IR into ``out_dir`` and return the .xml path; ports carry the signature names."""
        ...


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this host, and if not, why (shown by ``kvctl devices``)."""

    available: bool
    reason: str = ""
    full_name: str = ""


@runtime_checkable
class Runner(Protocol):
    """A loaded model on one device: thread-safe ``infer`` keyed by signature names.

    A runner may also offer ``async def infer_async(inputs, outputs)`` that completes without parking a thread
    (OpenVINO's infer requests, a worker child's pipe); the daemon calls ``infer_async`` below, which falls back
    to running ``infer`` on a worker thread, so a sync runner never blocks the event loop. A runner with
    ``lends_outputs = True`` takes ``infer_async(inputs, outputs, finish=f)`` and returns ``f(outputs)``, called on
    arrays that may be views of its own memory, before that memory is reused (the daemon serializes there).
    """

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        ...


async def infer_async(runner: Any, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                      finish: Callable[[dict[str, np.ndarray]], Any] | None = None) -> Any:
    """Run ``runner`` from the event loop: its own ``infer_async`` when it has one, else ``infer`` off the loop.
    With ``finish``, returns ``finish(outputs)``; the outputs it sees may be views of the runner's memory
    (``lends_outputs``), valid only during the call."""
    native = getattr(runner, "infer_async", None)
    if native is not None:
        if finish is not None and getattr(runner, "lends_outputs", False):
            return await native(inputs, outputs, finish=finish)
        result = await native(inputs, outputs)
    else:
        result = await asyncio.to_thread(runner.infer, inputs, outputs)
    return result if finish is None else finish(result)


@dataclass(frozen=True)
class LoadRequest:
    """Everything a backend needs to load one model version from the repository."""

    model_dir: Path
    manifest: Mapping[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    cache_dir: Path
    config: Mapping[str, str] = field(default_factory=dict)
    allow_unsafe_deserialization: bool = False


@runtime_checkable
class Backend(Protocol):
    """A device that serves models: ``CPU``, ``GPU``, ``TF`` ... ``load`` returns a Runner.

    Optional members kvd looks for:

    - ``isolated = True``: the backend runs untrusted model code (a framework executing the original model), so
      kvd calls ``load`` in a worker child process per model version (``kvserve.server.models.worker``), never
      in the daemon: a crash, OOM or file op there costs that model only. The child finds the backend by
      ``name`` through the plugin manager, so the plugin must register it the same way in every process.
    - ``admit(request) -> None``: cheap checks run in kvd before loading (before a worker is started); raise
      ``UnsafeModel`` / ``ModelRejected`` to refuse with a one-line reason.
    - ``benchmark_device: str``: the OpenVINO device the Benchmark RPC measures this backend's IR on (OpenVINO
      backends); a backend without it gets no OpenVINO benchmark rows.
    """

    name: str

    def availability(self) -> Availability:
        ...

    def can_serve(self, manifest: Mapping[str, Any]) -> str | None:
        """None when this backend can serve the model, else the reason it cannot."""
        ...

    def load(self, request: LoadRequest) -> Runner:
        ...


class ModelRejected(Exception):
    """The upload is not a model this converter can read (corrupt, truncated, wrong format): a client error."""


class UnsafeModel(ModelRejected):
    """The model needs unsafe deserialization (e.g. a Lambda layer's Python code) and it is not allowed."""


class ConversionFailed(Exception):
    """The model was read but cannot be converted (an unsupported op or layer); the message names it."""
