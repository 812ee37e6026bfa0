"""Served vs in-process, side by side in one run on the same IR: ``make bench`` (``python bench/serving.py``).

InceptionV3 (``weights=None``: nothing is downloaded) at batch 1. One kvd on a fresh repository serves it at
the default precision and as INT8 (calibrated on crops of scikit-learn's two bundled photos). This process
then measures both sides in turns, so load from elsewhere on a shared machine hits both alike:
  - single-call latency: one in-process call, one served call, one in-process call ... (p50 of each);
  - throughput: alternating slices of in-process OpenVINO (an AsyncInferQueue of the optimal number of
    requests) and kvd at concurrency 1..4, summed per side;
the in-process side runs the very IR file kvd serves, compiled with kvd's config; the served side sends
pre-serialized ModelInfer bytes from threads (raw tensor bytes, no protobuf work per call), so the client
stays light on the 2 cores it shares with kvd. Also: Keras ``predict`` and the seed tutorial's table through
kvd's own Benchmark RPC, kvd restart-to-ready with the model in the repository (with and without the
compiled-model cache), kvd's RSS after 1,000 and 10,000 inferences (the digits CNN, so that loop takes
seconds, not minutes), and optionally Triton's perf_analyzer against kvd.
Prints every figure and the ratios against the targets; writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import collections
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
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
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
        process = subprocess.Popen([sys.executable, "-m", "kvserve.server.main", "--http-address", "", "--repository", str(repository),
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


class InProcess:
    """OpenVINO on the IR kvd serves, compiled as kvd compiles it (THROUGHPUT hint, the repository's cache, and the
    execution precision the upload's ladder settled on: f32 where bf16 failed parity, as kvd serves it)."""

    def __init__(self, xml: Path, cache_dir: Path, feeds: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        import openvino as ov

        from kvserve.plugins.backends.openvino_devices import execution_config

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "CACHE_DIR": str(cache_dir),
                  **execution_config(manifest["precision"], manifest.get("execution_required"))}
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self.nireq = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # single calls take the requests in turn, as kvd's pool hands them out
        self.requests = [self.compiled.create_infer_request() for _ in range(self.nireq)]
        self.turn = 0
        self.queue = ov.AsyncInferQueue(self.compiled, self.nireq)
        self.feeds = feeds
        for _ in range(3):
            self.call()

    def call(self) -> None:
        self.turn = (self.turn + 1) % self.nireq
        self.requests[self.turn].infer(self.feeds, share_inputs=True)

    def run_for(self, seconds: float) -> tuple[int, float]:
        """Keep all ``nireq`` requests busy for ``seconds``: (inferences done, seconds taken)."""
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.queue.start_async(self.feeds, share_inputs=True)
            count += 1
        self.queue.wait_all()
        return count, time.perf_counter() - started


def bench_channel(address: str) -> Any:
    """An insecure channel to kvd that carries large tensors both ways (raw bytes: no stubs)."""
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    return grpc.insecure_channel(address, options=options)


class Served:
    """kvd over gRPC from this process: the same pre-serialized ModelInfer bytes every time, and no protobuf work
    per call (bytes in, bytes out), so the client stays light on the 2 cores it shares with kvd."""

    def __init__(self, address: str, payload: bytes) -> None:
        self.channel = bench_channel(address)
        self.infer = self.channel.unary_unary(INFER_METHOD)
        self.payload = payload
        for _ in range(3):
            self.call()

    def call(self) -> None:
        self.infer(self.payload, timeout=120)

    def run_for(self, seconds: float, concurrency: int) -> tuple[int, float, list[float]]:
        """``concurrency`` threads calling back to back for ``seconds``: (calls, seconds taken, latencies)."""
        spent: list[list[float]] = [[] for _ in range(concurrency)]
        stop_at = time.perf_counter() + seconds

        def worker(mine: list[float]) -> None:
            while (started := time.perf_counter()) < stop_at:
                self.call()
                mine.append(time.perf_counter() - started)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(mine,)) for mine in spent]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        latencies = [s for mine in spent for s in mine]
        return len(latencies), time.perf_counter() - started, latencies

    def close(self) -> None:
        self.channel.close()


class Streamed:
    """kvd over one ModelStreamInfer stream from this process (as perf_analyzer ``--streaming``): the same
    pre-serialized request, ``concurrency`` of them in flight at a time, answers read as they come."""

    def __init__(self, address: str, payload: bytes) -> None:
        self.channel = bench_channel(address)
        self.stream = self.channel.stream_stream(STREAM_METHOD)
        self.payload = payload
        self.run_for(0.2, 1)

    def run_for(self, seconds: float, concurrency: int) -> tuple[int, float, list[float]]:
        """One stream, ``concurrency`` requests in flight for ``seconds``: (answers, seconds taken, latencies)."""
        slots = threading.Semaphore(concurrency)
        sent: collections.deque[float] = collections.deque()
        stop_at = time.perf_counter() + seconds

        def requests() -> Iterator[bytes]:
            while True:
                slots.acquire()
                now = time.perf_counter()
                if now >= stop_at:
                    return
                sent.append(now)
                yield self.payload

        latencies = []
        started = time.perf_counter()
        for answer in self.stream(requests(), timeout=seconds + 120):
            if answer[:1] == b"\n":  # field 1, error_message: a benchmark must not count failures
                raise RuntimeError(f"kvd answered a streamed request with an error: {answer[:200]!r}")
            latencies.append(time.perf_counter() - sent.popleft())
            slots.release()
        return len(latencies), time.perf_counter() - started, latencies

    def close(self) -> None:
        self.channel.close()


def latency_pairs(local: InProcess, remote: Served, seconds: float) -> dict[str, float]:
    """p50 of single calls, in-process and served taken in turns, so load from elsewhere hits both alike."""
    ours, theirs = [], []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for call, into in ((local.call, ours), (remote.call, theirs)):
            started = time.perf_counter()
            call()
            into.append(time.perf_counter() - started)
    return {"in_process_p50_ms": p50_ms(ours), "served_p50_ms": p50_ms(theirs), "pairs": len(ours)}


def throughput_slices(local: InProcess, remote: Served, concurrency: int, slices: int, slice_s: float) -> dict[str, float]:
    """Throughput in alternating slices (in-process, then served at ``concurrency``), summed per side."""
    done = {"local": [0, 0.0], "served": [0, 0.0]}
    latencies: list[float] = []
    for _ in range(slices):
        count, took = local.run_for(slice_s)
        done["local"][0] += count
        done["local"][1] += took
        count, took, spent = remote.run_for(slice_s, concurrency)
        done["served"][0] += count
        done["served"][1] += took
        latencies += spent
    local_fps = done["local"][0] / done["local"][1]
    served_fps = done["served"][0] / done["served"][1]
    return {"concurrency": concurrency, "in_process_fps": local_fps, "served_fps": served_fps, "ratio": served_fps / local_fps,
            "served_p50_ms": p50_ms(latencies), "nireq": local.nireq}


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
    parser.add_argument("--seconds", type=float, default=30.0, help="how long single-call latency is sampled (calls alternate sides)")
    parser.add_argument("--slices", type=int, default=6, help="alternating throughput slices per side and concurrency")
    parser.add_argument("--slice-seconds", type=float, default=2.0, help="length of one throughput slice")
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
                               "cores": os.cpu_count(), "command": "make bench", "latency_seconds": args.seconds,
                               "slices": args.slices, "slice_seconds": args.slice_seconds}
    from kvserve.client import Client

    kvd = start_kvd(repository, kvd_log)
    try:
        with Client(kvd.address, timeout=None) as client:
            log("uploading InceptionV3 (default precision) ...")
            default = client.upload(paths["inception"], name="inception")
            log(f"uploading InceptionV3 as INT8, calibrated on {CALIBRATION_SAMPLES} photo crops ...")
            int8 = client.upload(paths["inception"], name="inception-int8", precision="int8", calibration=paths["calibration"])
            digits_manifest = client.upload(paths["digits"], name="digits")
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
        for label, ir, body, levels, manifest in (("default", xml, payload, (1, 2, 3, 4), default), ("int8", xml8, payload8, (2,), int8)):
            local, remote = InProcess(ir, repository / ".cache", feeds, manifest), Served(kvd.address, body)
            log(f"{label}: single-call latency, in-process and served in turns ({args.seconds:.0f} s) ...")
            figures[label] = {"latency": latency_pairs(local, remote, args.seconds), "throughput": []}
            for concurrency in levels:
                log(f"{label}: throughput, in-process and served at concurrency {concurrency} in {args.slices} alternating slices ...")
                figures[label]["throughput"].append(throughput_slices(local, remote, concurrency, args.slices, args.slice_seconds))
                (RESULTS / "serving.partial.json").write_text(json.dumps(figures, indent=2))
            remote.close()
            del local
        log("what serving adds to one call, on a model that computes next to nothing (digits CNN), in turns ...")
        digits_feeds = {"image": np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)}
        digits_payload = infer_payload("digits", digits_feeds)
        remote = Served(kvd.address, digits_payload)
        figures["overhead"] = latency_pairs(InProcess(repository / "digits" / "1" / digits_manifest["ir"]["xml"], repository / ".cache",
                                                      digits_feeds, digits_manifest), remote, 10.0)
        remote.close()
        if args.perf_analyzer:
            log("Triton perf_analyzer against kvd ...")
            figures["perf_analyzer"] = perf_analyzer(kvd.address, "inception", 10.0)
        log("the seed's table through kvd's Benchmark RPC (Keras, TF, OpenVINO fp32/default/fp16/int8) ...")
        with Client(kvd.address, timeout=None) as client:
            figures["benchmark_rpc"] = client.benchmark("inception-int8", iterations=20, backends=["keras", "tf", "CPU"])
        figures["keras"] = figures["benchmark_rpc"]["results"][0]
        log("RSS over 10,000 digits inferences ...")
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


def summarize(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: the figure (ratios of figures taken in turns), the goal, met or not."""
    best = max(f["default"]["throughput"], key=lambda t: t["ratio"])
    fastest = max(t["served_fps"] for t in f["default"]["throughput"])
    latency = f["default"]["latency"]
    delta = latency["served_p50_ms"] - latency["in_process_p50_ms"]
    overhead = f["overhead"]["served_p50_ms"] - f["overhead"]["in_process_p50_ms"]
    int8_fps = max(t["served_fps"] for t in f["int8"]["throughput"])
    keras_fps = 1.0 / f["keras"]["avg_s"]
    agreement = f["int8_parity"]["top1_agreement"]
    rss = f["rss"]
    restart = max(f["restart_to_ready_s"])
    return [
        {"target": "served throughput / in-process throughput", "value": best["ratio"], "goal": ">= 0.90", "met": best["ratio"] >= 0.90,
         "detail": f"{best['served_fps']:.2f} vs {best['in_process_fps']:.2f} inferences/s at concurrency {best['concurrency']}"},
        {"target": "served p50 at concurrency 1 - in-process p50 (ms)", "value": delta, "goal": "<= 1.0", "met": delta <= 1.0,
         "detail": f"{latency['served_p50_ms']:.2f} vs {latency['in_process_p50_ms']:.2f} ms, {latency['pairs']} calls each"},
        {"target": "  the same on the digits CNN: what serving adds (ms)", "value": overhead, "goal": "<= 1.0", "met": overhead <= 1.0,
         "detail": f"{f['overhead']['served_p50_ms']:.3f} vs {f['overhead']['in_process_p50_ms']:.3f} ms, {f['overhead']['pairs']} calls each"},
        {"target": f"served {f['default_precision']} throughput / Keras predict", "value": fastest / keras_fps, "goal": ">= 8",
         "met": fastest / keras_fps >= 8, "detail": f"{fastest:.2f} vs {keras_fps:.2f} inferences/s (Keras avg {f['keras']['avg_s'] * 1000:.0f} ms)"},
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
    print(f"\nkvserve serving benchmark, {f['date']}, {f['cpu']} ({f['cores']} cores), InceptionV3 batch 1; in-process and "
          f"served measured in turns ({f['slices']} x {f['slice_seconds']:.0f} s throughput slices per side)")
    for label in ("default", "int8"):
        latency = f[label]["latency"]
        print(f"{label:>7} single calls: in-process p50 {latency['in_process_p50_ms']:.1f} ms, served p50 {latency['served_p50_ms']:.1f} ms")
        for t in f[label]["throughput"]:
            print(f"{label:>7} c={t['concurrency']}: in-process {t['in_process_fps']:.2f}/s ({t['nireq']} requests), served "
                  f"{t['served_fps']:.2f}/s (p50 {t['served_p50_ms']:.1f} ms), ratio {t['ratio']:.3f}")
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
