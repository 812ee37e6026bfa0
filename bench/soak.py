"""A bounded soak of one kvd on loopback: concurrent inferences, uploads, reloads and deletes together.

    python bench/soak.py [--seconds 60] [--clients 4] [--model digits.h5] [--json results.json]

Starts its own kvd on 127.0.0.1 (free ports), uploads the digits CNN (trained here in seconds unless --model
is given) as 'steady', then for --seconds runs: --clients threads inferring on 'steady' and checking every
answer against the first one; a reloader forcing a fresh runner for 'steady' every 2 s; a churner uploading
new versions of 'churn', inferring on each and deleting old ones (and now and then the whole model); a
prober inferring on 'churn' (NOT_FOUND / UNAVAILABLE are expected there while it is deleted). It samples
kvd's RSS every second, then checks that 'steady' is still ready and answers the same, and stops kvd with
SIGTERM (exit 0 expected). Every loop is bounded by the deadline; the run stops by itself. Exit code 0 when
nothing unexpected happened and RSS stayed within bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_ON_CHURN = {"NOT_FOUND", "UNAVAILABLE"}
RSS_GROWTH_LIMIT = 0.25  # of the RSS after warm-up, over the measured part of the run


@dataclass
class Tally:
    """Shared counters; ``unexpected`` holds the first few surprising errors in full."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def surprise(self, what: str) -> None:
        with self.lock:
            self.counts["unexpected"] += 1
            if len(self.unexpected) < 20:
                self.unexpected.append(what)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_kvd(workdir: Path, http: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """kvd on free 127.0.0.1 ports; with ``http`` its HTTP port is written to ``workdir / "http.port"``."""
    port_file, http_port_file = workdir / "kvd.port", workdir / "http.port"
    log = open(workdir / "kvd.log", "wb")
    http_args = ["--http-address", "127.0.0.1:0", "--http-port-file", str(http_port_file)] if http else ["--http-address", ""]
    process = subprocess.Popen([sys.executable, "-m", "kvserve.server.main", *http_args, "--repository", str(workdir / "repo"),
                                "--address", "127.0.0.1:0", "--port-file", str(port_file), "--metrics-address", "127.0.0.1:0",
                                "--max-uploads", "1", "--upload-queue-seconds", "60"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not port_file.exists() or (http and not http_port_file.exists()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"kvd did not start; see {workdir / 'kvd.log'}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


def until(deadline: float, step: Callable[[], None], pause: float = 0.0) -> None:
    while time.monotonic() < deadline:
        step()
        if pause:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))


def run(seconds: float = 60, clients: int = 4, model: Path | None = None, workdir: Path | None = None,
        infer_pause: float = 0.0) -> dict[str, Any]:
    """Run the soak; returns the figures (``passed`` says whether it met its bounds).

    A ``workdir/repo`` that already holds 'steady' (a published version copied in) skips its upload;
    ``infer_pause`` leaves CPU to the converter in short runs on small machines.
    """
    from kvserve.client import Client

    workdir = Path(workdir or tempfile.mkdtemp(prefix="kvserve-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    x = _inputs()
    if model is None:
        model = _train(workdir)
    process, address = start_kvd(workdir)
    tally = Tally()
    rss: list[tuple[float, float]] = []
    try:
        with Client(address, timeout=120) as admin:
            _wait_ready(admin)
            if not admin.list_models():
                admin.upload(model, name="steady")
            expected = admin.infer("steady", x)["probabilities"]
            started = time.monotonic()
            deadline = started + seconds

            def infer_steady() -> None:
                with Client(address, timeout=30) as client:
                    def step() -> None:
                        began = time.perf_counter()
                        try:
                            got = client.infer("steady", x)["probabilities"]
                        except grpc.RpcError as error:
                            tally.surprise(f"steady infer: {error.code().name}: {error.details()}")
                            return
                        with tally.lock:
                            tally.latencies.append(time.perf_counter() - began)
                        tally.add("infers")
                        if not np.allclose(got, expected, atol=1e-5):
                            tally.surprise(f"steady answered differently (max diff {np.abs(got - expected).max():.3g})")
                    until(deadline, step, pause=infer_pause)

            def reload() -> None:
                with Client(address, timeout=120) as client:
                    def step() -> None:
                        try:
                            client.load("steady", devices=["CPU"])
                            tally.add("reloads")
                        except grpc.RpcError as error:
                            tally.surprise(f"reload: {error.code().name}: {error.details()}")
                    until(deadline, step, pause=2.0)

            def churn() -> None:
                with Client(address, timeout=120) as client:
                    rounds = 0

                    def step() -> None:
                        nonlocal rounds
                        rounds += 1
                        try:
                            manifest = client.upload(model, name="churn")
                            tally.add("uploads")
                            client.infer("churn", x, version=manifest["version"])
                            for version in client.describe("churn")["versions"][:-1]:
                                client.delete("churn", version)
                                tally.add("deletes")
                            if rounds % 3 == 0:
                                client.delete("churn")
                                tally.add("deletes")
                        except grpc.RpcError as error:
                            tally.surprise(f"churn: {error.code().name}: {error.details()}")
                    until(deadline, step)

            def probe_churn() -> None:
                with Client(address, timeout=30) as client:
                    def step() -> None:
                        try:
                            client.infer("churn", {"image": x})
                            tally.add("churn_infers")
                        except grpc.RpcError as error:
                            if error.code().name not in EXPECTED_ON_CHURN:
                                tally.surprise(f"churn infer: {error.code().name}: {error.details()}")
                            tally.add(f"expected_{error.code().name}")
                    until(deadline, step, pause=0.05)

            def sample_rss() -> None:
                until(deadline, lambda: rss.append((time.monotonic() - started, rss_mb(process.pid))), pause=1.0)

            workers = [threading.Thread(target=infer_steady) for _ in range(clients)]
            workers += [threading.Thread(target=target) for target in (reload, churn, probe_churn, sample_rss)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(seconds + 300)
            elapsed = time.monotonic() - started
            if not admin.model_ready("steady") or not np.allclose(admin.infer("steady", x)["probabilities"], expected, atol=1e-5):
                tally.surprise("'steady' is not ready or answers differently after the soak")
            models = {m["name"] for m in admin.list_models() if m["state"] == "READY"}
            if "steady" not in models:
                tally.surprise(f"'steady' lost; ready models: {sorted(models)}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            exit_code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            exit_code = process.wait()
    if exit_code != 0:
        tally.surprise(f"kvd exited {exit_code} on SIGTERM")
    return _figures(seconds, clients, elapsed, tally, rss, exit_code, workdir)


def _figures(seconds: float, clients: int, elapsed: float, tally: Tally, rss: list[tuple[float, float]], exit_code: int,
             workdir: Path) -> dict[str, Any]:
    warm = [mb for t, mb in rss if t >= seconds * 0.25] or [mb for _t, mb in rss]
    growth = (warm[-1] - warm[0]) / warm[0] if warm and warm[0] else 0.0
    latencies = sorted(tally.latencies)
    counts = dict(tally.counts)
    figures = {
        "seconds": round(elapsed, 1), "clients": clients, **counts,
        "infer_per_s": round(counts.get("infers", 0) / seconds, 1),  # infers run for ``seconds``, uploads may overrun
        "latency_ms_p50": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 2) if latencies else None,
        "rss_mb_after_warmup": round(warm[0], 1) if warm else None, "rss_mb_end": round(warm[-1], 1) if warm else None,
        "rss_mb_max": round(max(mb for _t, mb in rss), 1) if rss else None, "rss_growth": round(growth, 3),
        "kvd_exit_code": exit_code, "unexpected_errors": tally.unexpected, "log": str(workdir / "kvd.log"),
    }
    figures["passed"] = not tally.unexpected and growth <= RSS_GROWTH_LIMIT and counts.get("infers", 0) > 0
    return figures


def _inputs() -> np.ndarray:
    sys.path.insert(0, str(ROOT / "examples"))
    import digits

    return digits.load_data()[2][:8]


def _train(workdir: Path) -> Path:
    import digits

    model, _x, _y = digits.train()
    path = workdir / "digits.h5"
    model.save(path)
    return path


def _wait_ready(client: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ready():
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("kvd did not become ready")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", type=Path, help="a Keras .h5 of the digits CNN (default: train one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return report(run(args.seconds, args.clients, args.model), args.json)


def report(figures: dict[str, Any], json_path: Path | None) -> int:
    """Print the figures (and write them to ``json_path``); the exit code says whether the soak passed."""
    text = json.dumps(figures, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
