"""The benchmark child process: ``python -m kvserve.server.uploads.benchmark_child JOB.json``.

Measures one model the way the seed tutorial did (Keras ``predict``, a compiled ``tf.function``, OpenVINO),
for each OpenVINO device and precision asked for. TensorFlow is imported only here. Each row: synchronous
latency over N timed iterations after a warm-up (OpenVINO compiled with the LATENCY hint), and throughput
(OpenVINO: an AsyncInferQueue of the device's optimal number of requests under the THROUGHPUT hint;
Keras/TF: batch / average latency, as they already spread one call over every core).
"""

from __future__ import annotations

import functools

import time
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from kvserve.plugins.types import ConversionOptions, LoadRequest, ModelRejected, TensorSpec, UnsafeModel
from kvserve.server.uploads.child import child_main, emit

PRECISION_CONFIG = {"fp32": {"INFERENCE_PRECISION_HINT": "f32"}, "default": {}, "fp16": {}, "int8": {}}


def timings(call: Callable[[], Any], iterations: int, warmup: int) -> list[float]:
    """Seconds per call for ``iterations`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    spent = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        spent.append(time.perf_counter() - started)
    return spent


def latency_stats(spent: list[float]) -> dict[str, float]:
    values = np.asarray(spent, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"avg_s": float(values.mean()), "p50_s": float(p50), "p90_s": float(p90), "p99_s": float(p99),
            "min_s": float(values.min()), "max_s": float(values.max())}


class Bench:
    """One benchmark job: the model, its input, and the rows measured so far."""

    def __init__(self, job: dict[str, Any], channel: TextIO) -> None:
        self.job = job
        self.channel = channel
        self.model_dir = Path(job["model_dir"])
        self.manifest = job["manifest"]
        self.inputs = [TensorSpec.from_dict(t) for t in self.manifest["inputs"]]
        self.outputs = [TensorSpec.from_dict(t) for t in self.manifest["outputs"]]
        self.iterations = int(job["iterations"])
        self.warmup = int(job["warmup"])
        self.workdir = Path(job["workdir"])
        self.feeds, self.described = self._feeds()
        self.batch = int(next(iter(self.feeds.values())).shape[0]) if self.feeds else 1
        self.rows: list[dict[str, Any]] = []
        self._source: Any = None

    def _feeds(self) -> tuple[dict[str, np.ndarray], str]:
        from kvserve.server.uploads.parity import sample_feeds, seeded_inputs

        if self.job.get("sample_npy"):
            try:
                return sample_feeds(self.inputs, self.job["sample_npy"])
            except (ValueError, OSError) as error:
                raise ModelRejected(f"the sample cannot be used: {error}") from None
        feeds = seeded_inputs(self.inputs, int(self.job["batch"]), seed=int(self.job["seed"]))
        shapes = "; ".join(f"{s.name} {s.datatype} {list(feeds[s.name].shape)}" for s in self.inputs)
        return feeds, f"seeded random ({shapes}), uniform [0, 1), seed {self.job['seed']}"

    def progress(self, message: str) -> None:
        emit(self.channel, {"stage": "running", "message": message})

    def add(self, backend: str, precision: str, spent: list[float], fps: float, requests: int, execution: str, note: str) -> None:
        stats = latency_stats(spent)
        keras = next((r for r in self.rows if r["backend"] == "keras"), None)
        keras_avg = stats["avg_s"] if backend == "keras" else keras["avg_s"] if keras else 0.0
        row = {"backend": backend, "precision": precision, "iterations": len(spent), "batch": self.batch, **stats,
               "fps": fps, "requests": requests, "speedup_vs_keras": keras_avg / stats["avg_s"],
               "execution_precision": execution, "note": note}
        self.rows.append(row)
        emit(self.channel, {"stage": "result", "result": row})

    # --- the original model -----------------------------------------------------------------------------
    def source(self) -> Any:
        """The upload loaded by its converter plugin (a SourceModel), once."""
        if self._source is None:
            from kvserve.server.uploads.convert_child import converter_for

            fmt = self.manifest["source"]["format"]
            path = self.model_dir / self.manifest["source"].get("savedmodel_dir", self.manifest["source"]["file"])
            options = ConversionOptions(precision="fp32", allow_unsafe_deserialization=bool(self.job["allow_unsafe"]))
            converter = converter_for(fmt)
            self._source = (converter, converter.load(path, fmt, options))
        return self._source

    def keras(self) -> None:
        _, model = self.source()
        keras_model = model.handle
        from kvserve.plugins.keras_loading import keras_signature

        x = keras_signature(keras_model).call_args(self.feeds)  # by name: dict inputs get a dict
        self.progress(f"keras predict: {self.warmup} warm-up + {self.iterations} timed iterations")
        spent = timings(lambda: keras_model.predict(x, verbose=0), self.iterations, self.warmup)
        self.add("keras", "fp32", spent, self.batch / float(np.mean(spent)), 1, "f32", "keras Model.predict, one call at a time")

    def keras_call(self) -> None:
        """The model called directly (``model(x, training=False)``): no predict() per-call set-up, an honest baseline."""
        _, model = self.source()
        keras_model = model.handle
        x = [self.feeds[s.name] for s in self.inputs] if len(self.inputs) > 1 else self.feeds[self.inputs[0].name]
        self.progress(f"keras direct call: {self.warmup} warm-up + {self.iterations} timed iterations")

        def call() -> Any:
            out = keras_model(x, training=False)
            return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)

        spent = timings(call, self.iterations, self.warmup)
        self.add("keras-call", "fp32", spent, self.batch / float(np.mean(spent)), 1, "f32",
                 "keras model(x, training=False) called directly, outputs as numpy, one call at a time")

    def tf(self) -> None:
        from kvserve.plugins.backends.tensorflow_fallback import TensorFlowBackend

        self.progress(f"tf.function: {self.warmup} warm-up + {self.iterations} timed iterations")
        runner = TensorFlowBackend().load(LoadRequest(self.model_dir, self.manifest, self.inputs, self.outputs, self.workdir,
                                                      allow_unsafe_deserialization=bool(self.job["allow_unsafe"])))
        spent = timings(lambda: runner.infer(self.feeds), self.iterations, self.warmup)
        runner.close()
        self.add("tf", "fp32", spent, self.batch / float(np.mean(spent)), 1, "f32", "kvd's TF backend: a traced tf.function, one call at a time")

    # --- OpenVINO -----------------------------------------------------------------------------------------
    def ir_for(self, precision: str) -> Path:
        """The IR a precision row runs: the stored one where it matches, else derived into the workdir."""
        import openvino as ov

        stored = self.model_dir / self.manifest["ir"]["xml"]
        weights = {"fp32": "fp32", "default": "fp32", "fp16": "fp16", "int8": "int8"}[precision]
        if self.manifest.get("precision") == weights:
            return stored
        target = self.workdir / weights / "model.xml"
        if target.exists():
            return target
        emit(self.channel, {"stage": "preparing", "message": f"deriving an IR with {weights} weights for the {precision} rows"})
        target.parent.mkdir(parents=True, exist_ok=True)
        if weights == "fp16":
            ov.save_model(ov.Core().read_model(self.ir_for("fp32")), target, compress_to_fp16=True)
            return target
        converter, model = self.source()
        return converter.convert(model, target.parent, ConversionOptions(precision="fp32"))

    def openvino(self, name: str, device: str, precision: str) -> None:
        import openvino as ov

        xml = self.ir_for(precision)
        core = ov.Core()
        config = PRECISION_CONFIG[precision]
        self.progress(f"{name} {precision}: latency, {self.warmup} warm-up + {self.iterations} timed iterations")
        compiled = core.compile_model(str(xml), device, {**config, "PERFORMANCE_HINT": "LATENCY"})
        execution = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        infer_once = functools.partial(compiled.create_infer_request().infer, self.feeds, share_inputs=True)
        spent = timings(infer_once, self.iterations, self.warmup)
        del infer_once, compiled
        compiled = core.compile_model(str(xml), device, {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
        requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        total = max(self.iterations, 2) * requests
        self.progress(f"{name} {precision}: throughput, {total} inferences on {requests} requests")
        queue = ov.AsyncInferQueue(compiled, requests)
        for _ in range(requests):
            queue.start_async(self.feeds, share_inputs=True)
        queue.wait_all()
        started = time.perf_counter()
        for _ in range(total):
            queue.start_async(self.feeds, share_inputs=True)
        queue.wait_all()
        fps = total * self.batch / (time.perf_counter() - started)
        del queue, compiled
        if precision == "int8":
            execution = f"i8 + {execution}"
        self.add(name, precision, spent, fps, requests, execution,
                 f"OpenVINO {ov.__version__} on {device}: latency with the LATENCY hint, fps with THROUGHPUT and {requests} requests")


def run(job: dict[str, Any], channel: TextIO) -> dict[str, Any]:
    emit(channel, {"stage": "preparing", "message": "loading the model and building its input"})
    bench = Bench(job, channel)
    if "keras" in job["frameworks"]:
        bench.keras()
    if "keras-call" in job["frameworks"]:
        bench.keras_call()
    if "tf" in job["frameworks"]:
        bench.tf()
    for device in job["devices"]:
        for precision in job["precisions"]:
            bench.openvino(device["name"], device["device"], precision)
    return {"results": bench.rows, "input": bench.described}


def main() -> int:
    return child_main(run, [(UnsafeModel, "failed_precondition"), (ModelRejected, "invalid_argument")], worker="benchmark")


if __name__ == "__main__":
    raise SystemExit(main())
