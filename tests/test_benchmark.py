"""The Benchmark RPC and ``kvctl benchmark``: the shape of what they return and that the numbers are positive and
consistent (never how fast anything is); bad requests get clear statuses; TensorFlow stays out of kvd."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from kvserve.proto import kvserve_service_pb2 as kv

KVCTL = Path(sys.executable).with_name("kvctl")
ITERATIONS = 3


def _events(client, **request) -> list[kv.BenchmarkEvent]:
    return list(client.kvserve.Benchmark(kv.BenchmarkRequest(**request), timeout=300))


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def _check_row(row: dict, keras_avg: float) -> None:
    assert row["iterations"] == ITERATIONS and row["batch"] >= 1 and row["requests"] >= 1
    for key in ("avg_s", "p50_s", "p90_s", "p99_s", "min_s", "max_s", "fps", "speedup_vs_keras"):
        assert row[key] > 0, (key, row)
    assert row["min_s"] <= row["p50_s"] <= row["p90_s"] <= row["p99_s"] <= row["max_s"]
    assert row["min_s"] <= row["avg_s"] <= row["max_s"]
    assert row["speedup_vs_keras"] == pytest.approx(keras_avg / row["avg_s"], rel=1e-6)
    if row["backend"] in ("keras", "keras-call", "tf"):  # one call at a time: fps follows from the latency
        assert row["fps"] == pytest.approx(row["batch"] / row["avg_s"], rel=1e-6)
    assert row["note"] and row["execution_precision"]


def test_benchmark_streams_progress_then_every_row(served_digits):
    with served_digits.client() as client:
        events = _events(client, name="digits", iterations=ITERATIONS, warmup=1)
        stages = [kv.BenchmarkEvent.Stage.Name(e.stage) for e in events]
        assert stages[0] == "PREPARING" and stages[-1] == "DONE" and "RUNNING" in stages
        done = events[-1]
        assert done.name == "digits" and done.version == "1" and "seeded random" in done.input and "[1, 8, 8, 1]" in done.input
        streamed = [e.result for e in events if e.stage == kv.BenchmarkEvent.RESULT]
        assert list(done.results) == streamed

        report = client.benchmark("digits", iterations=ITERATIONS, warmup=1)
    rows = report["results"]
    # digits is an fp16 upload: fp32 is derived from the upload, fp16 is the stored IR, no int8
    assert [(r["backend"], r["precision"]) for r in rows] == [
        ("keras", "fp32"), ("keras-call", "fp32"), ("tf", "fp32"), ("CPU", "fp32"), ("CPU", "default"), ("CPU", "fp16")]
    keras = rows[0]
    assert keras["speedup_vs_keras"] == pytest.approx(1.0)
    for row in rows:
        _check_row(row, keras["avg_s"])
    cpu = {r["precision"]: r for r in rows if r["backend"] == "CPU"}
    assert cpu["fp32"]["execution_precision"] == "f32"


def test_benchmark_takes_a_sample_and_names_backends(served_digits, digits, tmp_path):
    sample = tmp_path / "four.npy"
    np.save(sample, digits.x_test[:4])
    with served_digits.client() as client:
        report = client.benchmark("digits32", iterations=ITERATIONS, backends=["CPU"], precisions=["fp32"], sample=sample)
    assert "user samples (.npy, 4)" in report["input"]
    (row,) = report["results"]
    assert (row["backend"], row["precision"], row["batch"]) == ("CPU", "fp32", 4)
    assert row["speedup_vs_keras"] == 0.0  # Keras was not measured
    assert row["fps"] > 0 and row["p50_s"] > 0


def test_benchmark_does_not_bring_tensorflow_into_kvd(kvd_factory, digits):
    kvd = kvd_factory()  # its own kvd: other tests may load a model on TF in the shared one
    with kvd.client(timeout=300) as client:
        client.upload(digits.paths["keras"], name="digits")
        report = client.benchmark("digits", iterations=1, warmup=1, backends=["tf", "keras"])
    assert [r["backend"] for r in report["results"]] == ["keras", "tf"]
    maps = Path(f"/proc/{kvd.process.pid}/maps").read_text()
    assert "site-packages/tensorflow/" not in maps and "site-packages/keras/" not in maps


@pytest.mark.parametrize("request_fields, code, words", [
    ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, ["model 'nope' not found", "digits"]),
    ({"name": "digits", "version": "9"}, grpc.StatusCode.NOT_FOUND, ["no version 9"]),
    ({"name": "digits", "backends": ["CUDA"]}, grpc.StatusCode.INVALID_ARGUMENT, ["unknown backend 'CUDA'", "keras, keras-call, tf"]),
    ({"name": "digits", "backends": ["GPU"]}, grpc.StatusCode.FAILED_PRECONDITION, ["GPU is not available"]),
    ({"name": "digits", "precisions": ["bf16"]}, grpc.StatusCode.INVALID_ARGUMENT, ["unknown precision 'bf16'"]),
    ({"name": "digits", "precisions": ["int8"]}, grpc.StatusCode.FAILED_PRECONDITION, ["no INT8 IR", "--precision int8"]),
    ({"name": "digits", "iterations": -1}, grpc.StatusCode.INVALID_ARGUMENT, ["iterations must be between"]),
    ({"name": "digits", "batch": 100000}, grpc.StatusCode.INVALID_ARGUMENT, ["batch must be between"]),
])
def test_bad_benchmark_requests(served_digits, request_fields, code, words):
    with served_digits.client() as client:
        got, message = _status(lambda: _events(client, **request_fields))
        assert got == code, message
        assert all(word in message for word in words), message
        assert client.live()


def test_bad_sample_is_invalid_argument(served_digits):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 5, 5), np.float32))
    with served_digits.client() as client:
        code, message = _status(lambda: _events(client, name="digits", iterations=1, backends=["CPU"], sample_npy=buffer.getvalue()))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "sample cannot be used" in message and "[-1, 8, 8, 1]" in message
        assert client.model_ready("digits")


def test_one_benchmark_at_a_time_and_cancel_stops_it(served_digits):
    with served_digits.client() as client:
        first = client.kvserve.Benchmark(kv.BenchmarkRequest(name="digits", iterations=10_000, backends=["keras"]), timeout=300)
        assert next(first).stage == kv.BenchmarkEvent.PREPARING  # the child is running
        code, message = _status(lambda: _events(client, name="digits", iterations=1))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "another benchmark is running" in message
        first.cancel()
        # the child is killed with the call: the next benchmark may start at once
        for _ in range(50):
            try:
                report = client.benchmark("digits", iterations=1, warmup=1, backends=["CPU"], precisions=["fp16"])
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.2)
        assert report["results"][0]["backend"] == "CPU"


def test_kvctl_benchmark_json_table_and_plot(served_digits, tmp_path):
    plot = tmp_path / "chart.png"
    base = [str(KVCTL), "--server", served_digits.address, "benchmark", "--model", "digits", "--iterations", str(ITERATIONS),
            "--backends", "keras,CPU", "--precisions", "fp16"]
    done = subprocess.run([*base, "--json", "--plot", str(plot)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert list(data) == ["results"]
    assert [list(row) for row in data["results"]] == [["backend", "precision", "avg_s", "p50_s", "p99_s", "fps", "speedup_vs_keras",
                                                       "avg_ms", "p50_ms", "p99_ms", "speedup_vs"]] * 2
    cpu_row = data["results"][1]
    assert cpu_row["speedup_vs"] == {"keras": pytest.approx(data["results"][0]["p50_s"] / cpu_row["p50_s"])}
    assert cpu_row["avg_ms"] == pytest.approx(cpu_row["avg_s"] * 1000)
    assert [(r["backend"], r["precision"]) for r in data["results"]] == [("keras", "fp32"), ("CPU", "fp16")]
    assert all(isinstance(v, float) and v > 0 for r in data["results"] for k, v in r.items() if k not in ("backend", "precision", "speedup_vs"))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    table = subprocess.run(base, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "160"})
    assert table.returncode == 0, table.stderr
    assert "keras" in table.stdout and "vs keras" in table.stdout and "1.0x" in table.stdout and "p50 ms" in table.stdout

    missing = subprocess.run([str(KVCTL), "--server", served_digits.address, "benchmark", "--model", "nope"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "model 'nope' not found" in missing.stderr and "Traceback" not in missing.stderr


def test_benchmark_rows_come_from_a_backends_declared_device_not_its_class(tmp_path):
    """The Benchmark RPC asks each backend for ``benchmark_device`` (a capability) instead of importing the OpenVINO
    plugin's class: a third-party backend declaring it gets rows, one without it is not an OpenVINO device."""
    from types import SimpleNamespace

    from kvserve.plugins.types import Availability
    from kvserve.server.errors import InvalidArgument
    from kvserve.server.uploads.benchmarks import Benchmarks

    class Declared:  # not kvserve's OpenVINOBackend
        name = "ACCEL"
        benchmark_device = "CPU"

        def availability(self) -> Availability:
            return Availability(True)

    class Plain:
        name = "PLAIN"

        def availability(self) -> Availability:
            return Availability(True)

    manager = SimpleNamespace(backends={"ACCEL": Declared(), "PLAIN": Plain()}, repository=SimpleNamespace(root=tmp_path),
                              settings=SimpleNamespace(child_memory_bytes=0))
    benchmarks = Benchmarks(manager)
    manifest = {"ir": {"xml": "model.xml"}, "source": {"format": "keras-v3"}}
    assert benchmarks._backends(["accel"], manifest) == ([], [{"name": "ACCEL", "device": "CPU"}])
    with pytest.raises(InvalidArgument, match="unknown backend 'PLAIN'"):
        benchmarks._backends(["PLAIN"], manifest)
    import kvserve.server.uploads.benchmarks as module
    assert "openvino_devices" not in module.__dict__ and "OpenVINOBackend" not in module.__dict__
