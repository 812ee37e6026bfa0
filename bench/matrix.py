"""The async core's matrix: per model, in-process OpenVINO vs kvd at concurrency 1..16, batching off and on.

``python bench/matrix.py [--models digits,mobilenet,inception,inception-int8] [--slice-seconds S]`` (part of
``make bench``). Models are built with ``weights=None`` (nothing downloaded) in a child, so TensorFlow never
enters this process. For each model one kvd serves the uploaded IR; in-process OpenVINO runs the same IR with an
AsyncInferQueue of its optimal number of requests (batch 1). kvd is driven by unary ModelInfer calls from c
threads, and by one ModelStreamInfer stream with c requests in flight (as perf_analyzer ``--streaming``). Every
served slice is preceded by an in-process slice (alternating, so load from elsewhere hits both alike); kvd's CPU
seconds are read from /proc during the served slices. For the digits CNN a third slice drives bench/floor.py, a
bare grpc.aio server answering a fixed response: the per-call floor of any Python gRPC server on this machine.
``--profile`` adds a cProfile of kvd's event-loop thread (an in-process kvd serving the digits CNN), which is
where all per-call Python runs. Writes bench/results/matrix.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402 - the shared pieces: kvd start-up, in-process runner, served client

RESULTS = serving.RESULTS
MODELS = ("digits", "mobilenet", "inception", "inception-int8")
CONCURRENCY = (1, 2, 4, 8, 16)
TICKS = os.sysconf("SC_CLK_TCK")


def build(workdir: Path, wanted: set[str]) -> dict[str, Path]:
    """digits CNN, MobileNetV2 224x224 and InceptionV3 as .h5 (random weights, seed 0), in a child."""
    paths = {"digits": workdir / "digits.h5", "mobilenet": workdir / "mobilenet_v2.h5", "inception": workdir / "inception_v3.h5"}
    if all(p.exists() for k, p in paths.items() if k in wanted):
        return paths
    code = f"""
import keras, os, sys
sys.path.insert(0, {str(serving.ROOT / 'examples')!r})
import digits
keras.utils.set_random_seed(0)
paths = {json.dumps({k: str(v) for k, v in paths.items() if k in wanted})}
if 'digits' in paths and not os.path.exists(paths['digits']):
    digits.train()[0].save(paths['digits'])
if 'mobilenet' in paths and not os.path.exists(paths['mobilenet']):
    keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)).save(paths['mobilenet'])
if 'inception' in paths and not os.path.exists(paths['inception']):
    keras.applications.InceptionV3(weights=None).save(paths['inception'])
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return paths


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def percentile_ms(seconds: list[float], q: float) -> float:
    if not seconds:
        return float("nan")
    return float(np.percentile(np.asarray(seconds), q) * 1000)


class Floor:
    """bench/floor.py in a child: grpc.aio answering ModelInfer with a fixed response (the per-call floor)."""

    def __init__(self, workdir: Path, payload: bytes) -> None:
        port_file = workdir / "floor.port"
        port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floor.py")), str(port_file)])
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bench/floor.py did not start")
            time.sleep(0.02)
        self.remote = serving.Served(f"127.0.0.1:{port_file.read_text().strip()}", payload)

    def close(self) -> None:
        self.remote.close()
        self.process.terminate()
        self.process.wait(10)


def measure(kvd: serving.Kvd, local: serving.InProcess, remote: serving.Served | serving.Streamed, slices: int, slice_s: float,
            floor: Floor | None = None) -> list[dict[str, Any]]:
    rows = []
    for concurrency in CONCURRENCY:
        done = {"local": [0, 0.0], "served": [0, 0.0], "floor": [0, 0.0]}
        latencies: list[float] = []
        cpu = floor_cpu = 0.0
        for _ in range(slices):
            count, took = local.run_for(slice_s)
            done["local"][0] += count
            done["local"][1] += took
            before = cpu_seconds(kvd.process.pid)
            count, took, spent = remote.run_for(slice_s, concurrency)
            cpu += cpu_seconds(kvd.process.pid) - before
            done["served"][0] += count
            done["served"][1] += took
            latencies += spent
            if floor is not None:
                before = cpu_seconds(floor.process.pid)
                count, took, _ = floor.remote.run_for(slice_s, concurrency)
                floor_cpu += cpu_seconds(floor.process.pid) - before
                done["floor"][0] += count
                done["floor"][1] += took
        local_fps = done["local"][0] / done["local"][1]
        served_fps = done["served"][0] / done["served"][1]
        rows.append({"concurrency": concurrency, "in_process_fps": round(local_fps, 1), "served_fps": round(served_fps, 1),
                     "ratio": round(served_fps / local_fps, 3), "p50_ms": round(percentile_ms(latencies, 50), 3),
                     "p99_ms": round(percentile_ms(latencies, 99), 3),
                     "kvd_cpu_s_per_1000": round(cpu / max(1, done["served"][0]) * 1000, 3),
                     "load_average": round(os.getloadavg()[0], 1)})
        if floor is not None:
            rows[-1]["floor_fps"] = round(done["floor"][0] / done["floor"][1], 1)
            rows[-1]["floor_cpu_s_per_1000"] = round(floor_cpu / max(1, done["floor"][0]) * 1000, 3)
        serving.log(f"  c={concurrency}: {rows[-1]}")
    return rows


def in_process_cpu_per_1000(local: serving.InProcess, seconds: float) -> float:
    """This process's CPU seconds per 1,000 in-process calls (the floor kvd's figure is compared with)."""
    before = time.process_time()
    count, _ = local.run_for(seconds)
    return round((time.process_time() - before) / max(1, count) * 1000, 3)


def run_model(label: str, source: Path, workdir: Path, slices: int, slice_s: float, batching: dict[str, float],
              streaming: bool = True) -> dict[str, Any]:
    from kvserve.client import Client

    repository = workdir / f"repo-{label}"
    kvd = serving.start_kvd(repository, workdir / f"kvd-{label}.log", "--metrics-address", "")
    try:
        with Client(kvd.address, timeout=3600) as client:
            precision = "int8" if label.endswith("int8") else ""
            serving.log(f"{label}: uploading {source.name} {precision}")
            kwargs: dict[str, Any] = {"precision": precision} if precision else {}
            if precision:
                kwargs["calibration"] = str(workdir / "calibration.npy")
            manifest = client.upload(source, name="m", **kwargs)
            shape = [1, *[d for d in manifest["inputs"][0]["shape"][1:]]]
            feeds = {manifest["inputs"][0]["name"]: np.random.default_rng(0).random(shape, dtype=np.float32)}
            xml = repository / "m" / str(manifest.get("version", 1)) / manifest["ir"]["xml"]
            local = serving.InProcess(xml, repository / ".cache", feeds, manifest)
            payload = serving.infer_payload("m", feeds)
            remote = serving.Served(kvd.address, payload)
            streamed = serving.Streamed(kvd.address, payload) if streaming else None
            result: dict[str, Any] = {"model": label, "nireq": local.nireq, "input": shape,
                                      "in_process_cpu_s_per_1000": in_process_cpu_per_1000(local, slice_s)}
            floor = Floor(workdir, payload) if label == "digits" else None
            try:
                serving.log(f"{label}: batching off" + (" (and the grpc.aio floor)" if floor else ""))
                result["off"] = measure(kvd, local, remote, slices, slice_s, floor)
                if streamed is not None:
                    serving.log(f"{label}: batching off, one ModelStreamInfer stream")
                    result["stream_off"] = measure(kvd, local, streamed, slices, slice_s)
                client.configure("m", max_batch=int(batching["max_batch"]), max_delay_ms=batching["max_delay_ms"])
                serving.log(f"{label}: batching on ({batching})")
                result["on"] = measure(kvd, local, remote, slices, slice_s)
                if streamed is not None:
                    serving.log(f"{label}: batching on, one ModelStreamInfer stream")
                    result["stream_on"] = measure(kvd, local, streamed, slices, slice_s)
            finally:
                if floor is not None:
                    floor.close()
                if streamed is not None:
                    streamed.close()
            remote.close()
            return result
    finally:
        kvd.stop()


def profile_loop(source: Path, workdir: Path, calls: int, streamed: bool = False, batching: dict[str, float] | None = None) -> str:
    """cProfile of kvd's event-loop thread while it serves ``calls`` digits inferences from 4 client threads, or
    (``streamed``) on one ModelStreamInfer stream with 16 in flight, optionally with batching on (the client in a
    child process)."""
    from kvserve.client import Client
    from kvserve.server.app import build, start
    from kvserve.server.settings import Settings

    daemon = build(Settings(repository=workdir / f"repo-profile{'-stream' if streamed else ''}", address="127.0.0.1:0",
                            metrics_address="", warm_converter=False))
    start(daemon)
    try:
        with Client(f"127.0.0.1:{daemon.port}", timeout=600) as client:
            manifest = client.upload(source, name="d")
            if batching:
                client.configure("d", max_batch=int(batching["max_batch"]), max_delay_ms=batching["max_delay_ms"])
        feeds = {manifest["inputs"][0]["name"]: np.zeros([1, *manifest["inputs"][0]["shape"][1:]], np.float32)}
        payload = serving.infer_payload("d", feeds)
        profiler = cProfile.Profile()

        async def toggle(on: bool) -> None:
            profiler.enable() if on else profiler.disable()

        # The client runs in a child process: client threads in this process would hold the GIL the loop
        # needs, and their waits would show up as the loop's (an earlier profile blamed start_async for them).
        setup = f"import sys, threading; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serving; "
        if streamed:
            client = setup + (f"remote = serving.Streamed('127.0.0.1:{daemon.port}', bytes.fromhex({payload.hex()!r})); "
                              f"remote.run_for({calls / 4000:.3f}, 16)")
        else:
            client = setup + (f"remote = serving.Served('127.0.0.1:{daemon.port}', bytes.fromhex({payload.hex()!r})); "
                              f"threads = [threading.Thread(target=lambda: [remote.call() for _ in range({calls // 4})]) for _ in range(4)]; "
                              "[t.start() for t in threads]; [t.join() for t in threads]")
        daemon.submit(toggle(True))
        subprocess.run([sys.executable, "-c", client], check=True)
        daemon.submit(toggle(False))
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(22)
        return out.getvalue()
    finally:
        daemon.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--slices", type=int, default=2, help="alternating slices per side and concurrency")
    parser.add_argument("--slice-seconds", type=float, default=1.0, help="length of one slice (short: the machine is shared)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--no-streaming", action="store_true", help="skip the ModelStreamInfer rows (one stream, c in flight)")
    parser.add_argument("--profile", type=int, default=2000, help="calls profiled on kvd's loop thread (0: skip)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    labels = [m.strip() for m in args.models.split(",") if m.strip()]
    paths = build(RESULTS, {"inception" if m.startswith("inception") else m for m in labels} | ({"digits"} if args.profile else set()))
    if "inception-int8" in args.models and not (RESULTS / "calibration.npy").exists():
        np.save(RESULTS / "calibration.npy", serving.calibration_images(serving.CALIBRATION_SAMPLES))
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": serving.cpu_name(),
                               "cores": os.cpu_count(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                               "batching": {"max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms}, "models": []}
    with tempfile.TemporaryDirectory(dir=RESULTS) as scratch:
        work = Path(scratch)
        if (RESULTS / "calibration.npy").exists():
            (work / "calibration.npy").symlink_to(RESULTS / "calibration.npy")
        for label in labels:
            source = paths["inception" if label.startswith("inception") else label]
            figures["models"].append(run_model(label, source, work, args.slices, args.slice_seconds,
                                               {"max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms},
                                               not args.no_streaming))
            (RESULTS / "matrix.json").write_text(json.dumps(figures, indent=1))
        if args.profile:
            figures["profile"] = profile_loop(paths["digits"], work, args.profile)
            print(figures["profile"])
            if not args.no_streaming:
                figures["profile_streamed_batched"] = profile_loop(paths["digits"], work, args.profile * 4, True,
                                                                   {"max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms})
                print(figures["profile_streamed_batched"])
    (RESULTS / "matrix.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if not k.startswith("profile")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
