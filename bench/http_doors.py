"""The doors side by side: Triton's perf_analyzer against one kvd over gRPC, HTTP with binary tensors (Triton's
binary-data extension) and HTTP with JSON tensors, on the digits CNN (what the door adds shows best on a small
model) and, with --inception, on InceptionV3 (random weights) as well.

    .venv/bin/python bench/http_doors.py [--seconds 2] [--concurrency 1,2] [--inception]

perf_analyzer ships in the tritonclient wheel; it needs Debian's libb64-0d and libcudart.so.12 (from the
nvidia-cuda-runtime-cu12 wheel, found here automatically). Prints a Markdown table; JSON in bench/results/.
Inputs are zeros (``--input-data zero``): perf_analyzer's random FP32 data includes NaN, which JSON clients do not
send and which sends kvd's JSON parsing down its slower NaN-tolerant path.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BUILD = """
import sys, keras
sys.path.insert(0, sys.argv[1])
import digits
model, _, _ = digits.train()
model.save(sys.argv[2])
if len(sys.argv) > 3:
    keras.utils.set_random_seed(0)
    keras.applications.InceptionV3(weights=None).save(sys.argv[3])
"""
PROTOCOLS = (("grpc", "grpc", None), ("http binary", "http", "binary"), ("http json", "http", "json"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def perf_env() -> dict[str, str]:
    libs = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "cuda_runtime" / "lib").is_dir():
            libs.append(str(Path(root) / "cuda_runtime" / "lib"))
    return {**os.environ, "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")])}


def run_perf(url: str, protocol: str, tensor_format: str | None, model: str, concurrency: str, seconds: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        command = [str(Path(sys.executable).with_name("perf_analyzer")), "-m", model, "-i", protocol, "-u", url,
                   "--concurrency-range", concurrency, "--measurement-interval", str(int(seconds * 1000)),
                   "--stability-percentage", "50", "--max-trials", "10", "--input-data", "zero", "-f", str(out)]
        if tensor_format:
            command += ["--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format]
        done = subprocess.run(command, capture_output=True, text=True, env=perf_env(), timeout=1800)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"perf_analyzer failed: {(done.stderr or done.stdout)[-800:]}")
        rows = csv.DictReader(out.read_text().splitlines())
        return [{"concurrency": int(r["Concurrency"]), "fps": float(r["Inferences/Second"]),
                 "p50_ms": float(r["p50 latency"]) / 1000, "p99_ms": float(r["p99 latency"]) / 1000} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer measurement interval")
    parser.add_argument("--concurrency", default="1:2", help="perf_analyzer --concurrency-range")
    parser.add_argument("--inception", action="store_true", help="also InceptionV3 (random weights, 299x299x3)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    digits_path, inception_path = RESULTS / "digits.h5", RESULTS / "inception_v3.h5"
    if not digits_path.exists() or (args.inception and not inception_path.exists()):
        log("building the models (TensorFlow, in a child) ...")
        subprocess.run([sys.executable, "-c", BUILD, str(ROOT / "examples"), str(digits_path),
                        *([str(inception_path)] if args.inception else [])], check=True)
    from kvserve.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        repo, ports = Path(tmp) / "repo", {name: Path(tmp) / name for name in ("grpc", "http")}
        process = subprocess.Popen([sys.executable, "-m", "kvserve.server.main", "--repository", str(repo), "--address", "127.0.0.1:0",
                                    "--port-file", str(ports["grpc"]), "--http-address", "127.0.0.1:0", "--http-port-file",
                                    str(ports["http"]), "--metrics-address", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not ports["grpc"].exists():
                time.sleep(0.05)
            grpc_url = f"127.0.0.1:{ports['grpc'].read_text().strip()}"
            http_url = f"127.0.0.1:{ports['http'].read_text().strip()}"
            models = {"digits": digits_path, **({"inception": inception_path} if args.inception else {})}
            with Client(grpc_url, timeout=1800) as client:
                for name, path in models.items():
                    log(f"uploading {name} ...")
                    client.upload(path, name=name)
            figures: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                                       "load_average": os.getloadavg(), "seconds": args.seconds, "rows": []}
            for model in models:
                for label, protocol, tensor_format in PROTOCOLS:
                    log(f"perf_analyzer {model} over {label} ...")
                    url = grpc_url if protocol == "grpc" else http_url
                    try:
                        for row in run_perf(url, protocol, tensor_format, model, args.concurrency, args.seconds):
                            figures["rows"].append({"model": model, "door": label, **row})
                    except RuntimeError as error:  # a noisy machine: say so, keep the other rows
                        log(str(error))
                        figures.setdefault("failed", []).append({"model": model, "door": label, "error": str(error)[-300:]})
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    (RESULTS / "http_doors.json").write_text(json.dumps(figures, indent=2))
    print("| model | door | concurrency | inferences/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for r in figures["rows"]:
        print(f"| {r['model']} | {r['door']} | {r['concurrency']} | {r['fps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    print(f"\nload average before: {figures['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
