"""ServerLive and ModelInfer with many idle streams open: issue 11's "64 idle health-watch or upload streams" target.

``python bench/idle_streams.py [--streams 64] [--windows 5] [--calls 400]``. One kvd (a child process) serves
the digits CNN. Windows alternate: ``calls`` ServerLive round trips and ``calls`` digits inferences with no
stream open, then the same with ``streams`` idle ``Health/Watch`` streams and ``streams`` header-less ``Upload``
streams open (the sync server parked a thread on each: 16 froze it). Per window: ServerLive p50/p99 and the
inference rate; the report gives the with/without ratios measured side by side. Writes
bench/results/idle_streams.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402 - kvd start-up, the light served client


def live_p99(live: Any, calls: int) -> tuple[float, float]:
    """(p50, p99) in ms of ``calls`` sequential ServerLive round trips."""
    from kvserve.proto import grpc_service_pb2 as pb

    spent = []
    request = pb.ServerLiveRequest()
    for _ in range(calls):
        started = time.perf_counter()
        live(request, timeout=10)
        spent.append(time.perf_counter() - started)
    return float(np.percentile(spent, 50) * 1000), float(np.percentile(spent, 99) * 1000)


class IdleStreams:
    """``count`` Health/Watch streams answered once and left open, and ``count`` Upload streams that never send."""

    def __init__(self, channel: Any, count: int) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc

        self.stop = threading.Event()
        self.watches = [health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(count)]
        self.uploads = [kv_grpc.KvServeStub(channel).Upload(self._silent()) for _ in range(count)]
        for watch in self.watches:
            next(watch)  # open and answered: the server holds each one

    def _silent(self) -> Iterator[Any]:
        self.stop.wait(3600)
        return
        yield  # noqa: unreachable - a generator that sends nothing

    def close(self) -> None:
        self.stop.set()
        for call in self.watches + self.uploads:
            call.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64, help="idle Watch streams, and as many idle Upload streams")
    parser.add_argument("--windows", type=int, default=5, help="alternating windows per side")
    parser.add_argument("--calls", type=int, default=400, help="ServerLive calls (and inferences) per window")
    args = parser.parse_args(argv)

    import grpc

    from kvserve.client import Client
    from kvserve.proto import grpc_service_pb2 as pb

    workdir = Path(tempfile.mkdtemp(prefix="kvd-idle-"))
    source = workdir / "digits.h5"
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(serving.ROOT / 'examples')!r}); import digits; "
                    f"digits.train()[0].save({str(source)!r})"], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    # Uploads beyond --max-uploads wait in the queue, which also holds no thread; allow all of them to be open.
    kvd = serving.start_kvd(workdir / "repo", workdir / "kvd.log", "--metrics-address", "", "--max-uploads", str(args.streams))
    rows: list[dict[str, Any]] = []
    try:
        with Client(kvd.address, timeout=600) as client:
            manifest = client.upload(source, name="digits")
        feeds = {manifest["inputs"][0]["name"]: np.zeros([1, *manifest["inputs"][0]["shape"][1:]], np.float32)}
        remote = serving.Served(kvd.address, serving.infer_payload("digits", feeds))
        with grpc.insecure_channel(kvd.address) as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                       request_serializer=pb.ServerLiveRequest.SerializeToString,
                                       response_deserializer=pb.ServerLiveResponse.FromString)
            for window in range(args.windows):
                for opened in (False, True):
                    streams = IdleStreams(channel, args.streams) if opened else None
                    try:
                        p50, p99 = live_p99(live, args.calls)
                        started = time.perf_counter()
                        for _ in range(args.calls):
                            remote.call()
                        rate = args.calls / (time.perf_counter() - started)
                    finally:
                        if streams is not None:
                            streams.close()
                    rows.append({"window": window, "idle_streams": 2 * args.streams if opened else 0, "live_p50_ms": round(p50, 3),
                                 "live_p99_ms": round(p99, 3), "infer_per_s": round(rate, 1),
                                 "load_average": round(os.getloadavg()[0], 2)})
                    serving.log(f"  {rows[-1]}")
        remote.close()
    finally:
        kvd.stop()

    def median(key: str, opened: bool) -> float:
        return float(np.median([r[key] for r in rows if bool(r["idle_streams"]) == opened]))

    summary = {"cpu": serving.cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "streams_open": 2 * args.streams, "calls_per_window": args.calls, "windows": rows,
               "live_p99_ms_without": median("live_p99_ms", False), "live_p99_ms_with": median("live_p99_ms", True),
               "live_p99_ms_with_worst": max(r["live_p99_ms"] for r in rows if r["idle_streams"]),
               "infer_ratio_with_vs_without": round(median("infer_per_s", True) / median("infer_per_s", False), 3)}
    serving.RESULTS.mkdir(parents=True, exist_ok=True)
    (serving.RESULTS / "idle_streams.json").write_text(json.dumps(summary, indent=1))
    print(f"ServerLive p99 (median of {args.windows} windows): {summary['live_p99_ms_without']:.2f} ms without, "
          f"{summary['live_p99_ms_with']:.2f} ms with {2 * args.streams} idle streams (worst window "
          f"{summary['live_p99_ms_with_worst']:.2f} ms; target < 10 ms); digits inference rate with/without: "
          f"{summary['infer_ratio_with_vs_without']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
