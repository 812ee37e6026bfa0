"""``CPU_LATENCY``: an example kvserve backend plugin, a latency-tuned profile of the OpenVINO CPU device.

The built-in ``CPU`` backend compiles for throughput (PERFORMANCE_HINT=THROUGHPUT) with a pool of infer
requests, which suits many concurrent clients. This plugin adds a second device name for the same
hardware, compiled with PERFORMANCE_HINT=LATENCY (one stream using all cores) and served through a single
infer request: the lowest time per call when requests come one at a time. Pick it per model with
``kvctl upload model.h5 --device CPU_LATENCY`` (or ``--device CPU_LATENCY,CPU,TF`` to fall back).

It uses only the public plugin contract (``kvserve.plugins.hookspecs`` and ``kvserve.plugins.types``),
nothing from kvd's internals. ``openvino`` is imported lazily, inside functions: importing this module (which
kvd does at start-up, and the conversion child does too) stays cheap, and a host without OpenVINO sees the
device listed as unavailable with the reason instead of the plugin failing to import.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import Availability, LoadRequest

NAME = "CPU_LATENCY"  # the device name users pick; must not clash with another backend's name
OV_DEVICE = "CPU"  # what OpenVINO is asked for
LATENCY_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "PERFORMANCE_HINT_NUM_REQUESTS": "1"}

_core: Any = None
_core_lock = threading.Lock()


def _ov_core() -> Any:
    """One OpenVINO Core for this plugin, created on first use (it costs ~100 ms and device discovery)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


class LatencyRunner:
    """A compiled model and its one infer request. A lock makes ``infer`` thread-safe (kvd calls it from
    many gRPC worker threads): concurrent calls queue rather than share the CPU, which is the point."""

    def __init__(self, compiled: Any, output_names: list[str]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self.output_names = output_names

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        # Inputs and outputs are keyed by the model's signature names (the IR's port names).
        # share_inputs avoids copying the request's arrays; share_outputs=False copies the results out of the
        # request's buffers, so they stay valid after the lock is released and the next call reuses them.
        with self._lock:
            if self._request is None:
                raise RuntimeError("the model was unloaded")
            result = self._request.infer(inputs, share_inputs=True, share_outputs=False)
            return {name: result[name] for name in (outputs or self.output_names)}

    def close(self) -> None:
        # Called when the version is unloaded or replaced; drop the request first, then the compiled model.
        with self._lock:
            self._request = None
            self._compiled = None


class CpuLatencyBackend:
    """The Backend protocol of ``kvserve.plugins.types``: name, availability, can_serve, load.

    ``precisions`` and ``properties()`` are optional extras that ``kvctl devices --json`` shows.
    """

    name = NAME
    precisions = ("fp32", "fp16")

    def properties(self) -> dict[str, str]:
        return {**LATENCY_CONFIG, "INFER_REQUESTS": "1"}

    def availability(self) -> Availability:
        # Never raise here: say why the device cannot be used, kvd shows it in `kvctl devices`.
        try:
            core = _ov_core()
        except Exception as error:  # noqa: BLE001 - openvino missing or broken
            return Availability(False, f"OpenVINO runtime unavailable: {error}")
        if OV_DEVICE not in core.available_devices:
            return Availability(False, f"OpenVINO reports no {OV_DEVICE} device (devices: {', '.join(core.available_devices) or 'none'})")
        full_name = core.get_property(OV_DEVICE, "FULL_DEVICE_NAME")
        return Availability(True, "", f"{full_name} (latency profile: 1 stream, 1 infer request)")

    def can_serve(self, manifest: Mapping[str, Any]) -> str | None:
        # Models whose conversion failed have no IR (only TF can serve those): say so, kvd tries the next device.
        if not manifest.get("ir"):
            return "the model has no OpenVINO IR (conversion failed or was skipped)"
        return None

    def load(self, request: LoadRequest) -> LatencyRunner:
        # The manifest names the IR relative to the version's directory; the cache dir lets OpenVINO reuse
        # the compiled blob on the next start. Per-load config from kvd (request.config) wins over ours.
        xml = request.model_dir / request.manifest["ir"]["xml"]
        config = {**LATENCY_CONFIG, "CACHE_DIR": str(request.cache_dir)}
        if request.manifest.get("precision") == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # the user asked for fp32: no bf16/fp16 execution
        config.update(request.config)
        compiled = _ov_core().compile_model(str(xml), OV_DEVICE, config)
        return LatencyRunner(compiled, [spec.name for spec in request.outputs])


@hookimpl
def kvserve_register_backends(register: Any) -> None:
    """kvd calls this at start-up with a ``register`` callback; register one object per device."""
    register(CpuLatencyBackend())
