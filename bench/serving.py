"""Served vs in-process, side by side in one run on the same IR: ``make bench`` (``python bench/serving.py``).

InceptionV3 (``weights=None``: nothing is downloaded) at batch 1. One kvd on a fresh repository serves it at
the default precision and as INT8 (calibrated on crops of scikit-learn's two bundled photos); this process
then measures, alternating so drift on a shared machine hits both sides alike:
  - in-process OpenVINO on the very IR file kvd serves, compiled with kvd's config: p50 of synchronous calls
    on one infer request, and throughput through an AsyncInferQueue of the optimal number of requests;
  - kvd over gRPC at concurrency 1..4 from client threads that send pre-serialized ModelInfer bytes (no
    protobuf work per call, raw tensor bytes), so the client stays light on the 2 shared cores;
  - Keras ``predict`` and the INT8 rows through kvd's own Benchmark RPC (measured in kvd's child process);
  - kvd restart-to-ready with the model in the repository (compiled-model cache);
  - kvd's RSS after 1,000 and 10,000 inferences (the digits CNN, so the loop takes seconds, not minutes).
Prints every figure and the ratios against the targets; writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CALIBRATION_SAMPLES = 128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- models and data (built once, kept in bench/results/) -------------------------------------------------
def model_paths(workdir: Path) -> dict[str, Path]:
    return {"inception": workdir / "inception_v3.h5", "digits": workdir / "digits.h5", "calibration": workdir / "calibration.npy"}


def build_models(workdir: Path) -> dict[str, Path]:
    """InceptionV3 (random weights, seed 0) and the digits CNN as .h5, plus INT8 calibration data as .npy.

    Runs in a child (``--build-only``) so TensorFlow never enters the process that measures.
    """
    paths = model_paths(workdir)
    if all(p.exists() for p in paths.values()):
        return paths
    if "--build-only" not in sys.argv:
        subprocess.run([sys.executable, __file__, "--build-only"], check=True)
        return paths
    import keras

    import digits

    log("building InceptionV3 (weights=None) and the digits CNN ...")
    keras.utils.set_random_seed(0)
    keras.applications.InceptionV3(weights=None).save(paths["inception"])
    model, _, _ = digits.train()
    model.save(paths["digits"])
    np.save(paths["calibration"], calibration_images(CALIBRATION_SAMPLES))
    return paths


def calibration_images(count: int, size: int = 299, seed: int = 0) -> np.ndarray:
    """Random crops of scikit-learn's two bundled photos, resized and scaled to [-1, 1] as InceptionV3 expects."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(160, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0)
    return np.stack(crops)


# --- kvd -----------------------------------------------------------------------------------------------
@dataclass
class Kvd:
    process: subprocess.Popen[bytes]
    address: str
    ready_s: float

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_kvd(repository: Path, log_path: Path, *extra: str) -> Kvd:
    """Start kvd on 127.0.0.1 and a free port; returns once it is ready, with the seconds that took."""
    from kvserve.client import Client

    port_file = repository.parent / "kvd.port"
    port_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log_path, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "kvserve.server.main", "--repository", str(repository),
                                    "--address", "127.0.0.1:0", "--port-file", str(port_file), *extra],
                                   stdout=out, stderr=subprocess.STDOUT)
    while not port_file.exists():
        if process.poll() is not None or time.perf_counter() - started > 120:
            raise RuntimeError(f"kvd did not start; see {log_path}")
        time.sleep(0.005)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    with Client(address, timeout=5) as client:
        while not client.ready():
            time.sleep(0.005)
    return Kvd(process, address, time.perf_counter() - started)


# --- measuring -------------------------------------------------------------------------------------------
def p50_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def timed_calls(call: Callable[[], Any], duration_s: float, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    spent: list[float] = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        spent.append(time.perf_counter() - started)
    return spent


def in_process(xml: Path, cache_dir: Path, feeds: dict[str, np.ndarray], duration_s: float) -> dict[str, float]:
    """OpenVINO on the IR kvd serves, compiled as kvd compiles it (THROUGHPUT hint, the repository's cache)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "CACHE_DIR": str(cache_dir)})
    request = compiled.create_infer_request()
    latency = timed_calls(lambda: request.infer(feeds, share_inputs=True), duration_s)
    nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, nireq)
    for _ in range(2 * nireq):
        queue.start_async(feeds, share_inputs=True)
    queue.wait_all()
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        queue.start_async(feeds, share_inputs=True)
        count += 1
    queue.wait_all()
    fps = count / (time.perf_counter() - started)
    return {"p50_ms": p50_ms(latency), "avg_ms": statistics.fmean(latency) * 1000, "fps": fps, "nireq": nireq, "calls": len(latency)}


def served(address: str, payload: bytes, concurrency: int, duration_s: float) -> dict[str, float]:
    """``concurrency`` threads, each sending the same pre-serialized ModelInfer request back to back."""
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        infer = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: no protobuf work
        for _ in range(3 * concurrency):
            infer(payload, timeout=60)
        per_thread: list[list[float]] = [[] for _ in range(concurrency)]
        barrier = threading.Barrier(concurrency + 1)
        stop_at = [0.0]

        def worker(spent: list[float]) -> None:
            barrier.wait()
            while True:
                started = time.perf_counter()
                if started >= stop_at[0]:
                    return
                infer(payload, timeout=60)
                spent.append(time.perf_counter() - started)

        threads = [threading.Thread(target=worker, args=(s,)) for s in per_thread]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        stop_at[0] = started + duration_s
        barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    spent = [s for thread in per_thread for s in thread]
    return {"concurrency": concurrency, "p50_ms": p50_ms(spent), "avg_ms": statistics.fmean(spent) * 1000, "fps": len(spent) / elapsed, "calls": len(spent)}


def codec_costs(payload: bytes, repeat: int = 300) -> dict[str, float]:
    """Microseconds to turn a received ModelInfer request into numpy inputs: protobuf's parser vs kvserve's."""
    import timeit

    from kvserve.proto import grpc_service_pb2 as pb
    from kvserve.proto.tensors import decode_request_inputs
    from kvserve.proto.wire import parse_infer_request

    def per_call(call: Callable[[], Any]) -> float:
        return min(timeit.repeat(call, number=repeat, repeat=3)) / repeat * 1e6

    return {"request_bytes": len(payload),
            "protobuf_decode_us": per_call(lambda: decode_request_inputs(pb.ModelInferRequest.FromString(payload))),
            "wire_decode_us": per_call(lambda: decode_request_inputs(parse_infer_request(payload)))}


def rss_growth(kvd: Kvd, payload: bytes, first: int = 1_000, total: int = 10_000) -> dict[str, float]:
    import grpc

    with grpc.insecure_channel(kvd.address) as channel:
        infer = channel.unary_unary(INFER_METHOD)
        for _ in range(first):
            infer(payload, timeout=60)
        after_first = kvd.rss_bytes()
        for _ in range(total - first):
            infer(payload, timeout=60)
        after_total = kvd.rss_bytes()
    return {"rss_after_first_mb": after_first / 2**20, "rss_after_total_mb": after_total / 2**20,
            "growth": after_total / after_first - 1, "first": first, "total": total}


def infer_payload(model: str, feeds: dict[str, np.ndarray]) -> bytes:
    from kvserve.proto.tensors import build_infer_request

    return build_infer_request(model, feeds).SerializeToString()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# --- the run ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternating in-process/served rounds (medians are reported)")
    parser.add_argument("--keep", action="store_true", help="keep the repository in bench/results/ afterwards")
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="also drive kvd with Triton's perf_analyzer (needs libb64-0d and libcudart.so.12 on LD_LIBRARY_PATH)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = build_models(RESULTS)
    if args.build_only:
        return 0
    repository = RESULTS / "repo"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.rmtree(RESULTS / "cache-aside", ignore_errors=True)
    kvd_log = RESULTS / "kvd.log"
    kvd_log.unlink(missing_ok=True)
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
                               "cores": os.cpu_count(), "command": "make bench", "seconds_per_phase": args.seconds,
                               "round_count": args.rounds}
    from kvserve.client import Client

    kvd = start_kvd(repository, kvd_log)
    try:
        with Client(kvd.address, timeout=None) as client:
            log("uploading InceptionV3 (default precision) ...")
            default = client.upload(paths["inception"], name="inception")
            log(f"uploading InceptionV3 as INT8, calibrated on {CALIBRATION_SAMPLES} photo crops ...")
            int8 = client.upload(paths["inception"], name="inception-int8", precision="int8", calibration=paths["calibration"])
            client.upload(paths["digits"], name="digits")
        figures["int8_parity"] = {k: int8["parity"][k] for k in ("top1_agreement", "max_rel_diff", "samples", "inputs")}
        figures["default_precision"] = default["precision"]
        kvd.stop()
        restarts = []
        for _ in range(3):
            kvd = start_kvd(repository, kvd_log)
            restarts.append(kvd.ready_s)
            kvd.stop()
        figures["restart_to_ready_s"] = restarts
        (repository / ".cache").rename(RESULTS / "cache-aside")  # once without the compiled-model cache, for comparison
        kvd = start_kvd(repository, kvd_log)
        figures["restart_without_cache_s"] = kvd.ready_s
        kvd.stop()
        shutil.rmtree(repository / ".cache")
        (RESULTS / "cache-aside").rename(repository / ".cache")
        kvd = start_kvd(repository, kvd_log)
        log(f"restart to ready: {', '.join(f'{s:.2f}' for s in restarts)} s (without the cache: {figures['restart_without_cache_s']:.2f} s)")

        with Client(kvd.address) as client:
            name = client.metadata("inception")["inputs"][0]["name"]
        feeds = {name: np.random.default_rng(0).random((1, 299, 299, 3), dtype=np.float32)}
        xml = repository / "inception" / "1" / default["ir"]["xml"]
        xml8 = repository / "inception-int8" / "1" / int8["ir"]["xml"]
        payload = infer_payload("inception", feeds)
        payload8 = infer_payload("inception-int8", feeds)

        figures["codec"] = codec_costs(payload)
        rounds = []
        for round_index in range(args.rounds):
            log(f"round {round_index + 1}/{args.rounds}: in-process OpenVINO, kvd at concurrency 1..4, INT8 in-process and served ...")
            rounds.append({"in_process": in_process(xml, repository / ".cache", feeds, args.seconds),
                           "served": [served(kvd.address, payload, c, args.seconds) for c in (1, 2, 3, 4)],
                           "int8_in_process": in_process(xml8, repository / ".cache", feeds, args.seconds),
                           "int8_served": [served(kvd.address, payload8, c, args.seconds) for c in (1, 2)]})
            figures["rounds"] = rounds
            (RESULTS / "serving.partial.json").write_text(json.dumps(figures, indent=2))
        if args.perf_analyzer:
            log("Triton perf_analyzer against kvd ...")
            figures["perf_analyzer"] = perf_analyzer(kvd.address, "inception", args.seconds)
        log("the seed's table through kvd's Benchmark RPC (Keras, TF, OpenVINO fp32/default/fp16/int8) ...")
        with Client(kvd.address, timeout=None) as client:
            figures["benchmark_rpc"] = client.benchmark("inception-int8", iterations=20, backends=["keras", "tf", "CPU"])
        figures["keras"] = figures["benchmark_rpc"]["results"][0]
        log("RSS over 10,000 digits inferences ...")
        digits_payload = infer_payload("digits", {"image": np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)})
        figures["rss"] = rss_growth(kvd, digits_payload)
    finally:
        kvd.stop()
        if not args.keep:
            shutil.rmtree(repository, ignore_errors=True)
    figures["summary"] = summarize(figures)
    (RESULTS / "serving.json").write_text(json.dumps(figures, indent=2))
    print_report(figures)
    return 0


def perf_analyzer(address: str, model: str, seconds: float) -> dict[str, Any]:
    """Triton's perf_analyzer at concurrency 1..4 (the binary ships in the tritonclient wheel)."""
    import csv

    binary = Path(sys.executable).with_name("perf_analyzer")
    out = RESULTS / "perf_analyzer.csv"
    command = [str(binary), "-m", model, "-i", "grpc", "-u", address, "--concurrency-range", "1:4",
               "--measurement-interval", str(int(seconds * 1000)), "--stability-percentage", "25", "-f", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not out.exists():
        return {"error": (done.stderr or done.stdout).strip()[-500:], "command": " ".join(command)}
    try:
        rows = sorted(csv.DictReader(out.read_text().splitlines()), key=lambda r: int(r["Concurrency"]))
        return {"command": " ".join(command).replace(address, "ADDR"),
                "rows": [{"concurrency": int(r["Concurrency"]), "fps": float(r["Inferences/Second"]),
                          "p50_ms": float(r["p50 latency"]) / 1000, "p99_ms": float(r["p99 latency"]) / 1000} for r in rows]}
    except (KeyError, ValueError) as error:
        return {"error": f"unexpected perf_analyzer CSV ({error}): {out.read_text()[:300]}", "command": " ".join(command)}


def median_over_rounds(f: dict[str, Any], pick: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(pick(r) for r in f["rounds"])


def summarize(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: the figure (a median over rounds of ratios taken within a round), the goal, met or not."""
    local_fps = median_over_rounds(f, lambda r: r["in_process"]["fps"])
    local_p50 = median_over_rounds(f, lambda r: r["in_process"]["p50_ms"])
    served_fps = median_over_rounds(f, lambda r: max(s["fps"] for s in r["served"]))
    served_p50 = median_over_rounds(f, lambda r: r["served"][0]["p50_ms"])
    ratio = median_over_rounds(f, lambda r: max(s["fps"] for s in r["served"]) / r["in_process"]["fps"])
    delta = median_over_rounds(f, lambda r: r["served"][0]["p50_ms"] - r["in_process"]["p50_ms"])
    int8_fps = median_over_rounds(f, lambda r: max(s["fps"] for s in r["int8_served"]))
    keras_fps = 1.0 / f["keras"]["avg_s"]
    agreement = f["int8_parity"]["top1_agreement"]
    rss = f["rss"]
    restart = max(f["restart_to_ready_s"])
    return [
        {"target": "served throughput / in-process throughput", "value": ratio, "goal": ">= 0.90", "met": ratio >= 0.90,
         "detail": f"medians {served_fps:.2f} vs {local_fps:.2f} inferences/s"},
        {"target": "served p50 at concurrency 1 - in-process p50 (ms)", "value": delta, "goal": "<= 1.0", "met": delta <= 1.0,
         "detail": f"medians {served_p50:.2f} vs {local_p50:.2f} ms"},
        {"target": f"served {f['default_precision']} throughput / Keras predict", "value": served_fps / keras_fps, "goal": ">= 8",
         "met": served_fps / keras_fps >= 8, "detail": f"{served_fps:.2f} vs {keras_fps:.2f} inferences/s (Keras avg {f['keras']['avg_s'] * 1000:.0f} ms)"},
        {"target": "served INT8 throughput / Keras predict", "value": int8_fps / keras_fps, "goal": ">= 12",
         "met": int8_fps / keras_fps >= 12, "detail": f"{int8_fps:.2f} vs {keras_fps:.2f} inferences/s"},
        {"target": "INT8 top-1 agreement with FP32, calibration set", "value": agreement, "goal": ">= 0.99",
         "met": agreement is not None and agreement >= 0.99,
         "detail": f"{f['int8_parity']['samples']} samples, max rel diff {f['int8_parity']['max_rel_diff']:.3g}"},
        {"target": "kvd restart to ready, InceptionV3 in the repo (s)", "value": restart, "goal": "< 2", "met": restart < 2.0,
         "detail": ", ".join(f"{s:.2f}" for s in f["restart_to_ready_s"]) + f" s; {f['restart_without_cache_s']:.2f} s without the cache"},
        {"target": "RSS growth, 1,000 -> 10,000 inferences (digits)", "value": rss["growth"], "goal": "<= 0.05",
         "met": abs(rss["growth"]) <= 0.05, "detail": f"{rss['rss_after_first_mb']:.1f} -> {rss['rss_after_total_mb']:.1f} MiB"},
    ]


def print_report(f: dict[str, Any]) -> None:
    print(f"\nkvserve serving benchmark, {f['date']}, {f['cpu']} ({f['cores']} cores), {f['round_count']} rounds of "
          f"{f['seconds_per_phase']:.0f} s phases, InceptionV3 batch 1")
    for index, r in enumerate(f["rounds"], 1):
        for label, local, served_rows in (("default", r["in_process"], r["served"]), ("INT8", r["int8_in_process"], r["int8_served"])):
            remote = "; ".join(f"c={s['concurrency']} p50 {s['p50_ms']:.1f} ms {s['fps']:.2f}/s" for s in served_rows)
            print(f"round {index} {label:>7}: in-process p50 {local['p50_ms']:.1f} ms {local['fps']:.2f}/s ({local['nireq']} requests) | served {remote}")
    for row in f.get("perf_analyzer", {}).get("rows", []):
        print(f"perf_analyzer c={row['concurrency']}: p50 {row['p50_ms']:.1f} ms, {row['fps']:.2f}/s")
    if "error" in f.get("perf_analyzer", {}):
        print(f"perf_analyzer failed: {f['perf_analyzer']['error']}")
    codec = f["codec"]
    print(f"decoding one {codec['request_bytes'] / 2**20:.2f} MiB ModelInfer request: protobuf {codec['protobuf_decode_us']:.0f} us, "
          f"kvserve.proto.wire {codec['wire_decode_us']:.0f} us")
    rpc = f["benchmark_rpc"]
    print(f"\nBenchmark RPC ({rpc['input']}):")
    print("backend  precision   avg s     p50 s     p99 s     fps      speedup vs Keras")
    for row in rpc["results"]:
        print(f"{row['backend']:<9}{row['precision']:<12}{row['avg_s']:<10.4f}{row['p50_s']:<10.4f}{row['p99_s']:<10.4f}"
              f"{row['fps']:<9.2f}{row['speedup_vs_keras']:.2f}x")
    print("\ntarget                                               value     goal      result")
    for row in f["summary"]:
        value = f"{row['value']:.3f}" if isinstance(row["value"], float) else str(row["value"])
        print(f"{row['target']:<53}{value:<10}{row['goal']:<10}{'met' if row['met'] else 'MISSED'}  ({row['detail']})")


if __name__ == "__main__":
    raise SystemExit(main())
