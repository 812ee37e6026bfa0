"""What the TF worker child costs per call: the same small Keras model run by the TF backend's runner in this
process and through a worker child (``kvserve.server.models.worker.WorkerRunner``), sequential calls of one
batch, median and p90 latency and their ratio.

    .venv/bin/python bench/tf_worker_overhead.py [--calls 300] [--batch 8] [--width 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path, width: int) -> dict:
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((width,), name="features")
    hidden = keras.layers.Dense(width, activation="relu")(features)
    model = keras.Model(features, keras.layers.Dense(10, activation="softmax", name="scores")(hidden))
    model.save(folder / "source.keras")
    manifest = {"name": "bench", "source": {"format": "keras-v3", "file": "source.keras"},
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, width]}],
                "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def timed(infer, feeds: dict, calls: int) -> list[float]:
    for _ in range(20):
        infer(feeds)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        infer(feeds)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    from kvserve.plugins.backends.tensorflow_fallback import load_tensorflow_runner
    from kvserve.plugins.types import LoadRequest, TensorSpec
    from kvserve.server.models.worker import WorkerRunner

    with tempfile.TemporaryDirectory(prefix="kvserve-bench-") as tmp:
        folder = Path(tmp)
        manifest = build(folder, args.width)
        inputs = [TensorSpec.from_dict(t) for t in manifest["inputs"]]
        outputs = [TensorSpec.from_dict(t) for t in manifest["outputs"]]
        feeds = {"features": np.random.default_rng(0).random((args.batch, args.width), dtype=np.float32)}
        local = load_tensorflow_runner(folder, manifest, inputs, outputs)
        worker = WorkerRunner("TF", LoadRequest(folder, manifest, inputs, outputs, folder))
        try:
            np.testing.assert_allclose(worker.infer(feeds)["scores"], local.infer(feeds)["scores"], atol=1e-6)
            rows = {"in-process TF": timed(local.infer, feeds, args.calls), "TF worker child": timed(worker.infer, feeds, args.calls)}
        finally:
            worker.close()
    print(f"{args.calls} sequential calls, batch {args.batch}, Dense {args.width}->{args.width}->10")
    print("| runner | median ms | p90 ms |")
    print("|---|---|---|")
    medians = {}
    for name, times in rows.items():
        times.sort()
        medians[name] = statistics.median(times)
        print(f"| {name} | {medians[name] * 1e3:.3f} | {times[int(len(times) * 0.9)] * 1e3:.3f} |")
    print(f"worker / in-process median: {medians['TF worker child'] / medians['in-process TF']:.2f}x "
          f"(+{(medians['TF worker child'] - medians['in-process TF']) * 1e3:.3f} ms per call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
