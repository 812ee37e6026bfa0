"""The Benchmark RPC's work, transport-neutral: check the request, measure in a child process, relay rows.

TensorFlow is needed for the Keras and TF rows, so every measurement runs in a child (``benchmark_child``) as
conversions do: the daemon never imports it, and a crash costs one benchmark. A benchmark takes every core,
so only one runs at a time; it also slows the models kvd serves meanwhile.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from kvserve.plugins import safe
from kvserve.plugins.backends.tensorflow_fallback import SOURCE_FORMATS
from kvserve.plugins.types import Availability
from kvserve.server.uploads.child import ChildJob, Launcher, run_child
from kvserve.server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from kvserve.server.models.manager import ModelManager
from kvserve.server.models.repository import parse_version

FRAMEWORKS = ("keras", "keras-call", "tf")  # predict(), a direct model(x) call, the traced tf.function
KERAS_FORMATS = ("keras-h5", "keras-v3")
# OpenVINO rows: fp32 = FP32 weights with f32 execution forced; default = FP32 weights, the device's own
# execution precision; fp16 = FP16-compressed weights; int8 = the NNCF-quantized IR of an int8 upload.
PRECISIONS = ("fp32", "default", "fp16", "int8")
MAX_ITERATIONS = 10_000
MAX_BATCH = 256

BENCHMARK = ChildJob(
    module="kvserve.server.uploads.benchmark_child",
    noun="benchmark",
    worker="benchmark process",
    lost="no results were produced",
    timeout_hint="use fewer iterations, a smaller batch or fewer backends",
    log_name="benchmark.log",
)


@dataclass
class BenchmarkSpec:
    """What a client asked for; empty lists and zeros mean the defaults."""

    name: str
    version: str = ""
    iterations: int = 0
    warmup: int = 0
    backends: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    sample_npy: bytes = b""
    batch: int = 0
    seed: int = 0


class Benchmarks:
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self._busy = threading.Lock()
        self.launcher = Launcher(BENCHMARK, label=str(manager.repository.root), memory_bytes=manager.settings.child_memory_bytes)  # rare: no warm child

    def run(self, spec: BenchmarkSpec, cancelled: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Yield progress events (``stage``, ``message``), one ``result`` event per row, then ``done``.

        Setting ``cancelled`` stops the child at once (the call's termination callback does).
        """
        job = self.plan(spec)
        if not self._busy.acquire(blocking=False):
            raise ResourceExhausted("another benchmark is running (it uses every core); try again when it has finished")
        try:
            with tempfile.TemporaryDirectory(prefix="kvd-benchmark-") as tmp:
                if spec.sample_npy:
                    (Path(tmp) / "sample.npy").write_bytes(spec.sample_npy)
                    job["sample_npy"] = str(Path(tmp) / "sample.npy")
                job["workdir"] = tmp
                for event in run_child(self.launcher, job, Path(tmp), self.manager.settings.benchmark_timeout_s, cancelled):
                    if "stage" not in event:  # the child's final answer
                        done = {"stage": "done", "name": job["name"], "version": str(job["version"]), **event["result"]}
                        _remember(done, job["iterations"])
                        yield done
                    else:
                        yield event
        finally:
            self._busy.release()

    def plan(self, spec: BenchmarkSpec) -> dict[str, Any]:
        """The child's job: which model, rows and input; every user error is raised here, before any work."""
        repository = self.manager.repository
        versions = repository.versions(spec.name)
        if not versions:
            raise NotFound(self.manager.not_found_message(spec.name))
        number = parse_version(spec.version) if spec.version else versions[-1]
        if number not in versions:
            raise NotFound(f"model '{spec.name}' has no version {number}; versions: {', '.join(map(str, versions))}")
        manifest = repository.read_manifest(spec.name, number)
        iterations = spec.iterations or 20
        warmup = spec.warmup or 3
        batch = spec.batch or 1
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise InvalidArgument(f"iterations must be between 1 and {MAX_ITERATIONS}, got {iterations}")
        if not 0 <= warmup <= MAX_ITERATIONS:
            raise InvalidArgument(f"warm-up iterations must be between 0 and {MAX_ITERATIONS}, got {warmup}")
        if not 1 <= batch <= MAX_BATCH:
            raise InvalidArgument(f"batch must be between 1 and {MAX_BATCH}, got {batch}")
        frameworks, devices = self._backends(spec.backends, manifest)
        precisions = self._precisions(spec.precisions, manifest) if devices else []
        return {"name": spec.name, "version": number, "model_dir": str(repository.version_dir(spec.name, number)),
                "manifest": manifest, "frameworks": frameworks, "devices": devices, "precisions": precisions,
                "iterations": iterations, "warmup": warmup, "batch": batch, "seed": spec.seed,
                "allow_unsafe": self.manager.settings.allow_unsafe_deserialization}

    def _backends(self, names: list[str], manifest: dict[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
        """(frameworks, OpenVINO devices as {name, device}). Without names: every row that can run here;
        a named row that cannot is refused with the reason."""
        openvino = {name: b for name, b in self.manager.backends.items() if _benchmark_device(b)}
        tf_backend = self.manager.backends.get("TF")
        tf_found = safe.availability(tf_backend) if tf_backend is not None else Availability(False, "no TF backend plugin is loaded")
        source_format = manifest.get("source", {}).get("format")

        def problem(name: str) -> str | None:
            if name in FRAMEWORKS:
                if not tf_found.available:
                    return f"'{name}' rows need TensorFlow: {tf_found.reason}"
                if source_format not in (KERAS_FORMATS if name.startswith("keras") else SOURCE_FORMATS):
                    return f"'{name}' rows need a Keras upload (.h5 or .keras); this model was uploaded as {source_format}"
                return None
            found = safe.availability(openvino[name])
            if not found.available:
                return f"{name} is not available on this server: {found.reason}"
            if not manifest.get("ir"):
                return f"the model has no OpenVINO IR ({manifest.get('conversion_error') or 'not converted'}); benchmark keras or tf"
            return None

        if names:
            chosen = []
            for raw in dict.fromkeys(n.strip() for n in names if n.strip()):
                name = raw.lower() if raw.lower() in FRAMEWORKS else raw.upper()
                if name not in FRAMEWORKS and name not in openvino:
                    raise InvalidArgument(f"unknown backend '{raw}'; use keras, keras-call, tf or an OpenVINO device ({', '.join(openvino)})")
                reason = problem(name)
                if reason:
                    raise FailedPrecondition(reason)
                chosen.append(name)
        else:
            chosen = [name for name in (*FRAMEWORKS, *openvino) if problem(name) is None]
        frameworks = [f for f in FRAMEWORKS if f in chosen]
        return frameworks, [{"name": n, "device": _benchmark_device(openvino[n])} for n in chosen if n in openvino]

    @staticmethod
    def _precisions(names: list[str], manifest: dict[str, Any]) -> list[str]:
        has_int8 = manifest.get("precision") == "int8"
        if not names:
            return [p for p in PRECISIONS if p != "int8" or has_int8]
        chosen = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
        unknown = [p for p in chosen if p not in PRECISIONS]
        if unknown:
            raise InvalidArgument(f"unknown precision '{unknown[0]}'; use {', '.join(PRECISIONS)}")
        if "int8" in chosen and not has_int8:
            raise FailedPrecondition("the model has no INT8 IR; upload it with --precision int8 to benchmark int8")
        return [p for p in PRECISIONS if p in chosen]


# The last finished report per model version, in memory (the web page draws it; a restart forgets it).
_LAST: dict[tuple[str, str], dict[str, Any]] = {}
_LAST_LOCK = threading.Lock()


def _benchmark_device(backend: Any) -> str | None:
    """The OpenVINO device a backend's benchmark rows run on: a capability it declares (``benchmark_device``),
    so this module needs no plugin's class; a plugin whose property fails offers no rows."""
    try:
        device = getattr(backend, "benchmark_device", None)
    except Exception:  # noqa: BLE001 - a broken plugin must not break the Benchmark RPC
        return None
    return device if isinstance(device, str) and device else None


def _remember(done: dict[str, Any], iterations: int) -> None:
    import datetime

    report = {key: done[key] for key in ("name", "version", "input", "results")}
    report["iterations"] = iterations
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with _LAST_LOCK:
        _LAST[(done["name"], done["version"])] = report
        _LAST[(done["name"], "")] = report


def last_report(name: str, version: str = "") -> dict[str, Any] | None:
    """The last benchmark of ``name`` (``version``, or whichever version ran last) since kvd started."""
    with _LAST_LOCK:
        return _LAST.get((name, version))
