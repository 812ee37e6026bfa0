"""Built-in OpenVINO backends: ``CPU``, ``GPU`` and ``MYRIAD`` (served on ``NPU`` where OpenVINO has one).

One compiled model per loaded version, with a pool of infer requests sized from the device's
OPTIMAL_NUMBER_OF_INFER_REQUESTS: each call borrows a request, starts it asynchronously and gives it back when
its completion callback fires, so concurrent calls keep every stream busy without a thread per call. Inputs are handed to
OpenVINO with ``share_inputs``: writable arrays are used in place, read-only ones (views of the received gRPC
bytes) are copied once into the request's input tensor, the one copy a request costs on its way in.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import Any, Mapping

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import Availability, LoadRequest, TensorSpec

PRECISION_ENV = "KVSERVE_INFERENCE_PRECISION"
EXECUTION_PRECISIONS = ("f32", "bf16", "f16")

_core_lock = threading.Lock()
_core: Any = None


def core() -> Any:
    """The process's one OpenVINO Core (creating it costs ~100 ms and device discovery)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _string_ops()
            _core = ov.Core()
            _init_numpy_bridge(ov)
        return _core


def _string_ops() -> None:
    """IRs of string models (TextVectorization, StringLookup) hold openvino-tokenizers' ops; its import
    registers them with every Core made afterwards. Without it such IRs fail to load and TF serves them."""
    try:
        import openvino_tokenizers  # noqa: F401
    except ImportError:
        pass


def openvino_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OpenVINO takes string tensors as numpy bytes arrays, not the object arrays v2 BYTES decode to."""
    if not any(a.dtype == object for a in inputs.values()):
        return inputs
    return {name: np.array([bytes(x) if not isinstance(x, str) else x.encode() for x in a.reshape(-1)], dtype=np.bytes_).reshape(a.shape)
            if a.dtype == object else a for name, a in inputs.items()}


def _init_numpy_bridge(ov: Any) -> None:
    """Make OpenVINO's bindings set up their numpy API now, in one thread. Their first use from two threads at
    once (two requests arriving together on a fresh model) deadlocks in pybind11's ``gil_safe_call_once``."""
    ov.Type.f32.to_dtype()
    ov.Tensor(np.zeros(1, dtype=np.float32)).data  # noqa: B018 - the access is the point


def _completed(userdata: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]) -> None:
    """OpenVINO's completion callback (runs on one of its threads): wake the awaiting coroutine on its loop."""
    loop, done = userdata
    try:
        loop.call_soon_threadsafe(_resolve, done)
    except RuntimeError:  # the loop has closed (kvd stopping): nobody awaits the answer
        pass


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def forced_execution() -> str | None:
    """The execution precision ``KVSERVE_INFERENCE_PRECISION`` forces on every model (``auto`` or unset: none).

    It lets one machine run the suite as each CPU family would: f32 as on an AVX2-only CPU, bf16 as on one with
    avx512_bf16 or AMX. Raises ValueError naming the accepted values.
    """
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto", "default"):
        return None
    if value not in EXECUTION_PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={value!r} is not an execution precision; use auto, {', '.join(EXECUTION_PRECISIONS)}")
    return value


def execution_config(weights: str, required: str | None = None) -> dict[str, str]:
    """OpenVINO's INFERENCE_PRECISION_HINT for a model with ``weights`` precision.

    fp32 weights always execute in f32 (the user asked for exact answers), as does a model whose manifest
    requires it (``required``: parity failed at the device's default). Otherwise the forced precision, else none:
    the device picks its fastest, which is bf16 on every CPU with avx512_bf16 or AMX and f32 elsewhere.
    """
    if weights == "fp32" or required == "f32":
        return {"INFERENCE_PRECISION_HINT": "f32"}
    forced = forced_execution()
    return {"INFERENCE_PRECISION_HINT": forced} if forced else {}


def executed_precision(compiled: Any) -> str:
    """What the compiled model really executes in (``f32``, ``bf16``, ``f16``): tolerances derive from this."""
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())
    except Exception:  # noqa: BLE001 - a device without the property
        return "unknown"


class OpenVINORunner:
    """Inference on one compiled model through a pool of infer requests.

    ``infer`` (thread-safe, blocking) serves parity checks and benchmarks; ``infer_async`` serves the daemon:
    it starts a pooled request with ``start_async`` and awaits a future its completion callback resolves, so
    no thread waits while OpenVINO computes. Outputs are copied out of the request's tensors once, then the
    request goes back to the pool.
    """

    def __init__(self, compiled: Any, outputs: list[TensorSpec], device: str) -> None:
        self.compiled = compiled
        self.device = device
        self.execution_precision = executed_precision(compiled)
        self.output_names = [spec.name for spec in outputs]
        self.nireq = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._output_index = _output_index(compiled, self.output_names)
        for _ in range(self.nireq):
            request = compiled.create_infer_request()
            request.set_callback(_completed, None)
            self._pool.put(request)

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        request = self._pool.get()
        try:
            result = request.infer(openvino_inputs(inputs), share_inputs=True, share_outputs=False)
            return {name: result[name] for name in (outputs or self.output_names)}
        finally:
            self._pool.put(request)

    async def infer_async(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        try:
            request = self._pool.get_nowait()
        except queue.Empty:  # more callers than requests (the daemon's gate prevents it): wait on a thread
            return await asyncio.to_thread(self.infer, inputs, outputs)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        try:
            request.start_async(openvino_inputs(inputs), userdata=(loop, done), share_inputs=True)
        except BaseException:
            self._pool.put(request)
            raise
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:  # the caller left: the request is still running, pool it once it ends
            done.add_done_callback(lambda _: self._pool.put(request))
            raise
        try:
            request.wait()  # returns at once; raises OpenVINO's error if the inference failed
            return {name: self._read(request, name) for name in (outputs or self.output_names)}
        finally:
            self._pool.put(request)

    def _read(self, request: Any, name: str) -> np.ndarray:
        index = self._output_index.get(name)
        tensor = request.get_output_tensor(index) if index is not None else request.get_tensor(name)
        return np.array(tensor.data, copy=True)  # the one copy out: the request's memory is reused next call

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait()
        self.compiled = None


def _output_index(compiled: Any, names: list[str]) -> dict[str, int]:
    """Signature output name -> the compiled model's output index (read by index: no name lookup per call)."""
    index: dict[str, int] = {}
    for position, port in enumerate(compiled.outputs):
        for name in port.get_names():
            if name in names:
                index.setdefault(name, position)
    return index


class OpenVINOBackend:
    """An OpenVINO device as a kvserve backend. ``device`` is what OpenVINO is asked for."""

    precisions = ("fp32", "fp16", "int8")

    def __init__(self, name: str, device: str | None = None) -> None:
        self.name = name
        self.device = device or name

    def properties(self) -> dict[str, str]:
        return {"PERFORMANCE_HINT": "THROUGHPUT | LATENCY", "NUM_STREAMS": "AUTO | n", "INFER_REQUESTS": "OPTIMAL_NUMBER_OF_INFER_REQUESTS"}

    def availability(self) -> Availability:
        try:
            ov_core = core()
        except Exception as error:  # noqa: BLE001 - openvino missing or broken
            return Availability(False, f"OpenVINO runtime unavailable: {error}")
        try:
            full_name = str(ov_core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception as error:  # noqa: BLE001 - OpenVINO's own reason is the one to show
            return Availability(False, f"OpenVINO cannot open {self.device}: {_first_line(error)}")
        return Availability(True, "", full_name)

    def can_serve(self, manifest: Mapping[str, Any]) -> str | None:
        if not manifest.get("ir"):
            error = manifest.get("conversion_error")
            return f"the model has no OpenVINO IR ({error})" if error else "the model has no OpenVINO IR (conversion was skipped)"
        return None

    def compile_config(self, request: LoadRequest) -> dict[str, str]:
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "CACHE_DIR": str(request.cache_dir)}
        config.update(execution_config(str(request.manifest.get("precision", "")), request.manifest.get("execution_required")))
        config.update(request.config)
        return config

    def load(self, request: LoadRequest) -> OpenVINORunner:
        xml = request.model_dir / request.manifest["ir"]["xml"]
        # Compile the model object, not the path: OpenVINO then keys the CACHE_DIR blob by the model's content
        # rather than its file path, so the blob made while an upload loads in staging is the one a restart
        # finds after the rename (keyed by path, every upload left an orphan blob and the next start recompiled).
        ov_core = core()
        compiled = ov_core.compile_model(ov_core.read_model(str(xml)), self.device, self.compile_config(request))
        return OpenVINORunner(compiled, request.outputs, self.device)


class MyriadBackend(OpenVINOBackend):
    """MYRIAD left OpenVINO in 2023.0; the name is kept for old configs and mapped to NPU where one exists."""

    def __init__(self) -> None:
        super().__init__("MYRIAD", "NPU")

    def availability(self) -> Availability:
        try:
            devices = core().available_devices
        except Exception as error:  # noqa: BLE001
            return Availability(False, f"OpenVINO runtime unavailable: {error}")
        if "NPU" not in devices:
            return Availability(
                False,
                "OpenVINO removed the MYRIAD plugin in 2023.0 and this host has no NPU to serve it on; "
                f"use CPU (devices here: {', '.join(devices) or 'none'})",
            )
        found = super().availability()
        return Availability(found.available, found.reason, f"NPU (for MYRIAD): {found.full_name}" if found.available else "")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(error).__name__])[0][:300]


@hookimpl
def kvserve_register_backends(register: Any) -> None:
    register(OpenVINOBackend("CPU"))
    register(OpenVINOBackend("GPU"))
    register(MyriadBackend())
