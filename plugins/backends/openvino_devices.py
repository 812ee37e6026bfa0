"""Built-in OpenVINO backends: ``CPU``, ``GPU`` and ``MYRIAD`` (served on ``NPU`` where OpenVINO has one).

One compiled model per loaded version, with a pool of infer requests sized from the device's
OPTIMAL_NUMBER_OF_INFER_REQUESTS: each call borrows a request, runs it (on the event loop when it is cheaper than
the trip through OpenVINO's threads, else started asynchronously and awaited through its completion callback) and
gives it back, so concurrent calls keep every stream busy without a thread per call. Inputs are copied once into
the request's own tensors (received buffers are read-only: OpenVINO would copy them anyway), outputs once out.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import threading
import time
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import Availability, LoadRequest, TensorSpec

INLINE_MAX_S = 0.3e-3  # infer on the event loop itself when a call is expected to take less (see OpenVINORunner)

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


def _completed(userdata: tuple[asyncio.AbstractEventLoop, asyncio.Future[float], float]) -> None:
    """OpenVINO's completion callback (runs on one of its threads): wake the awaiting coroutine on its loop with
    the seconds the request took (start to completion, measured here, not after the loop got round to it)."""
    loop, done, started = userdata
    try:
        loop.call_soon_threadsafe(_resolve, done, time.perf_counter() - started)
    except RuntimeError:  # the loop has closed (kvd stopping): nobody awaits the answer
        pass


def _resolve(done: asyncio.Future[float], seconds: float) -> None:
    if not done.done():
        done.set_result(seconds)


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


class _Slot:
    """One infer request and the input tensors it owns (inputs are copied into these: the one copy in)."""

    __slots__ = ("request", "inputs", "shapes", "swapped")

    def __init__(self, request: Any, count: int) -> None:
        self.request = request
        self.inputs = [request.get_input_tensor(index) for index in range(count)]
        self.shapes: list[tuple[int, ...] | None] = [None] * count  # kept here: reading ov.Shape costs ~0.2 ms
        self.swapped = False  # OpenVINO's dispatcher fed this request: its input tensors may not be ours any more


T = TypeVar("T")


class OpenVINORunner:
    """Inference on one compiled model through a pool of infer requests.

    ``infer`` (thread-safe, blocking) serves parity checks, warm-up and benchmarks; ``infer_async`` serves the
    daemon. How a call runs depends on what it is expected to cost: the fastest call seen so far (warm-up gives
    the first), per input element, times this call's input elements (the minimum: load from elsewhere only ever
    makes calls slower, so it is the model's own cost):
      - a call expected to take less than ``INLINE_MAX_S`` (a small model: the digits CNN computes in ~0.1 ms) runs
        synchronously on the event loop: handing it to OpenVINO's threads and back (start_async, a completion
        callback taking the GIL, call_soon_threadsafe, the loop waking) costs more CPU than the inference;
      - anything longer starts a pooled request with ``start_async`` and awaits a future its completion
        callback resolves, so no thread waits while OpenVINO computes and the loop keeps serving.
    Inputs are copied into the request's own tensors (the one copy in: received buffers are read-only, so
    OpenVINO would copy them anyway) without OpenVINO's Python data dispatcher, which cost ~80 us of CPU per
    call here; other dtypes or string inputs go through the dispatcher. Outputs are copied out once (by the
    caller's ``finish``, which the daemon uses to serialize the response straight from the output tensors), then the
    request goes back to the pool.
    """

    lends_outputs = True  # infer_async(..., finish=f): f sees the output tensors' own memory (see plugins.types)

    def __init__(self, compiled: Any, outputs: list[TensorSpec], device: str) -> None:
        self.compiled = compiled
        self.device = device
        self.execution_precision = executed_precision(compiled)
        self.output_names = [spec.name for spec in outputs]
        self.nireq = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.element_s = math.inf  # fastest seconds per input element seen; unknown until the first (warm-up) call
        self._pool: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._output_index = _output_index(compiled, self.output_names)
        self._input_index, self._input_dtypes = _input_index(compiled)
        self._raw_infer, self._raw_start = _raw_calls()
        for _ in range(self.nireq):
            request = compiled.create_infer_request()
            request.set_callback(_completed, None)
            self._pool.put(_Slot(request, len(self._input_dtypes)))

    def _feed(self, slot: _Slot, inputs: Mapping[str, np.ndarray]) -> bool:
        """Copy ``inputs`` into the slot's own tensors; False when one needs OpenVINO's dispatcher instead."""
        places = []
        for name, array in inputs.items():
            index = self._input_index.get(name)
            if index is None or array.dtype != self._input_dtypes[index]:
                return False
            places.append((index, array))
        request = slot.request
        if slot.swapped:  # the dispatcher may also have resized our tensors: shapes are unknown again
            slot.shapes = [None] * len(slot.shapes)
        for index, array in places:
            tensor = slot.inputs[index]
            if slot.shapes[index] != array.shape:
                tensor.shape = array.shape
                slot.shapes[index] = array.shape
            np.copyto(tensor.data, array, casting="no")
            if slot.swapped:
                request.set_input_tensor(index, tensor)  # ~35 us: only after the dispatcher swapped its own in
        slot.swapped = False
        return True

    def _run_sync(self, slot: _Slot, inputs: dict[str, np.ndarray], elements: int) -> None:
        request = slot.request
        started = time.perf_counter()
        if self._feed(slot, inputs):
            self._raw_infer(request, {}, False, True)
        else:
            slot.swapped = True
            request.infer(openvino_inputs(inputs), share_inputs=False, share_outputs=True)
        self._observe(time.perf_counter() - started, elements)

    def _observe(self, seconds: float, elements: int) -> None:
        self.element_s = min(self.element_s, seconds / max(1, elements))

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        slot = self._pool.get()
        try:
            self._run_sync(slot, inputs, _elements(inputs))
            return {name: self._read(slot.request, name) for name in (outputs or self.output_names)}
        finally:
            self._pool.put(slot)

    async def infer_async(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                          finish: Callable[[dict[str, np.ndarray]], T] | None = None) -> dict[str, np.ndarray] | T:
        """Outputs copied out, or ``finish(outputs)`` called on views of the request's own output tensors before
        the request goes back to the pool (the caller serializes straight from OpenVINO's memory: the one copy
        out). ``finish`` must not keep the arrays it is given."""
        try:
            slot = self._pool.get_nowait()
        except queue.Empty:  # more callers than requests (the daemon's gate prevents it): wait on a thread
            copied = await asyncio.to_thread(self.infer, inputs, outputs)
            return copied if finish is None else finish(copied)
        elements = _elements(inputs)
        if self.element_s * elements < INLINE_MAX_S:  # cheaper than the round trip through OpenVINO's threads
            try:
                self._run_sync(slot, inputs, elements)
                return self._deliver(slot.request, outputs, finish)
            finally:
                self._pool.put(slot)
        request = slot.request
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        try:
            if self._feed(slot, inputs):
                self._raw_start(request, {}, (loop, done, time.perf_counter()))
            else:
                slot.swapped = True
                request.start_async(openvino_inputs(inputs), userdata=(loop, done, time.perf_counter()), share_inputs=False)
        except BaseException:
            self._pool.put(slot)
            raise
        try:
            self._observe(await asyncio.shield(done), elements)
        except asyncio.CancelledError:  # the caller left: the request is still running, pool it once it ends
            done.add_done_callback(lambda _: self._pool.put(slot))
            raise
        try:
            request.wait()  # returns at once; raises OpenVINO's error if the inference failed
            return self._deliver(request, outputs, finish)
        finally:
            self._pool.put(slot)

    def _deliver(self, request: Any, outputs: list[str] | None, finish: Callable[[dict[str, np.ndarray]], T] | None) -> Any:
        names = outputs or self.output_names
        if finish is None:
            return {name: self._read(request, name) for name in names}
        return finish({name: self._view(request, name) for name in names})

    def _view(self, request: Any, name: str) -> np.ndarray:
        index = self._output_index.get(name)
        tensor = request.get_output_tensor(index) if index is not None else request.get_tensor(name)
        return tensor.data

    def _read(self, request: Any, name: str) -> np.ndarray:
        return np.array(self._view(request, name), copy=True)  # the one copy out: the request's memory is reused next call

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait()
        self.compiled = None


def _elements(inputs: Mapping[str, np.ndarray]) -> int:
    return sum(array.size for array in inputs.values())


def _raw_calls() -> tuple[Any, Any]:
    """The bindings' own infer/start_async, which take tensors already in place (no Python data dispatcher)."""
    try:
        from openvino._pyopenvino import InferRequest as Bound

        return Bound.infer, Bound.start_async
    except (ImportError, AttributeError):  # another OpenVINO layout: the public methods, with an empty feed
        import openvino as ov

        return ((lambda request, feed, _, shared: ov.InferRequest.infer(request, feed, share_outputs=shared)),
                (lambda request, feed, userdata: ov.InferRequest.start_async(request, feed, userdata)))


def _input_index(compiled: Any) -> tuple[dict[str, int], list[Any]]:
    """Input name -> index, and each input's numpy dtype (None where numpy has none: string, bf16)."""
    index: dict[str, int] = {}
    dtypes: list[Any] = []
    for position, port in enumerate(compiled.inputs):
        for name in port.get_names():
            index.setdefault(name, position)
        try:
            dtype = np.dtype(port.get_element_type().to_dtype())
        except Exception:  # noqa: BLE001 - string or bf16 inputs: the dispatcher's business
            dtype = None
        dtypes.append(None if dtype is None or dtype == object or dtype.kind in "SU" else dtype)
    return index, dtypes


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

    @property
    def benchmark_device(self) -> str:
        """The Benchmark RPC measures this backend's IR on this OpenVINO device (plugins.types.Backend)."""
        return self.device

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
