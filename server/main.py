"""``kvd``: the kvserve daemon's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from kvserve.server.settings import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES, PRECISIONS, Settings, default_repository
from kvserve.server.settings import PERFORMANCE_HINTS
from kvserve.server.version import SERVER_VERSION


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str]:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="kvd", description="kvserve daemon: serves Keras models through OpenVINO over gRPC (KServe v2).")
    parser.add_argument("--version", action="version", version=f"kvd {SERVER_VERSION}")
    parser.add_argument("--repository", type=Path, default=None, help="model repository directory (env KVSERVE_REPOSITORY; default: the user data dir)")
    parser.add_argument("--address", default=env("KVSERVE_ADDRESS", DEFAULT_ADDRESS), help=f"host:port to listen on (default {DEFAULT_ADDRESS}; port 0 picks a free one)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening (for scripts and tests)")
    parser.add_argument("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_BYTES // (1024 * 1024), help="largest gRPC message accepted or sent, in MiB")
    parser.add_argument("--max-upload-mb", type=int, default=4096, help="largest model upload, in MiB")
    parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    parser.add_argument("--devices", default="CPU,TF", help="default device preference for uploads")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="default IR precision for uploads")
    parser.add_argument("--performance-hint", type=str.upper, choices=PERFORMANCE_HINTS, default="",
                        help="OpenVINO hint for models that set none at upload: THROUGHPUT (the default: concurrent clients) or LATENCY (one at a time)")
    parser.add_argument("--conversion-timeout", type=float, default=900.0, help="seconds a conversion may take")
    parser.add_argument("--grace-seconds", type=float, default=10.0, help="how long in-flight calls may finish at shutdown")
    parser.add_argument("--allow-unsafe-deserialization", action="store_true",
                        help="allow Keras models whose loading runs Python code (Lambda layers); only for models you trust")
    parser.add_argument("--log-level", default=env("KVSERVE_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    return Settings(
        repository=args.repository or default_repository(),
        address=args.address,
        port_file=args.port_file,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        workers=args.workers,
        default_devices=tuple(d.strip().upper() for d in args.devices.split(",") if d.strip()),
        default_precision=args.precision,
        conversion_timeout_s=args.conversion_timeout,
        performance_hint=args.performance_hint,
        grace_seconds=args.grace_seconds,
        allow_unsafe_deserialization=args.allow_unsafe_deserialization,
    ), args.log_level


def main(argv: list[str] | None = None) -> int:
    settings, level = parse_args(argv)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from kvserve.server.app import build, start

    try:
        daemon = build(settings)
    except OSError as error:
        logging.getLogger("kvserve.server").error("%s", error)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    start(daemon)
    stop.wait()
    logging.getLogger("kvserve.server").info("shutting down (grace %.0f s)", settings.grace_seconds)
    daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
