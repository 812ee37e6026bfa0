"""``kvd``: the kvserve daemon's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from kvserve.proto.images import MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS
from kvserve.server.ops.limits import DEFAULT_DECODE_PIXELS, ImageLimits
from kvserve.server.ops.logs import FORMATS, configure
from kvserve.server.settings import (DEFAULT_ADDRESS, DEFAULT_HTTP_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_METRICS_ADDRESS,
                                     DEFAULT_PRECISION, PERFORMANCE_HINTS, PRECISIONS, Settings, default_repository)
from kvserve.server.version import SERVER_VERSION
from kvserve.plugins.keras_loading import CUSTOM_OBJECTS_ENV


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str]:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="kvd", description="kvserve daemon: serves Keras models through OpenVINO over gRPC (KServe v2).")
    parser.add_argument("--version", action="version", version=f"kvd {SERVER_VERSION}")
    parser.add_argument("--repository", type=Path, default=None, help="model repository directory (env KVSERVE_REPOSITORY; default: the user data dir)")
    parser.add_argument("--address", default=env("KVSERVE_ADDRESS", DEFAULT_ADDRESS), help=f"host:port to listen on (default {DEFAULT_ADDRESS}; port 0 picks a free one)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening (for scripts and tests)")
    parser.add_argument("--http-address", default=env("KVSERVE_HTTP_ADDRESS", DEFAULT_HTTP_ADDRESS),
                        help=f"host:port of the HTTP API: KServe v2 REST and TF Serving REST (default {DEFAULT_HTTP_ADDRESS}; port 0 picks one; '' disables it)")
    parser.add_argument("--http-port-file", type=Path, help="write the HTTP port here once listening")
    parser.add_argument("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_BYTES // (1024 * 1024), help="largest gRPC message accepted or sent, in MiB")
    parser.add_argument("--max-upload-mb", type=int, default=4096, help="largest model upload, in MiB")
    parser.add_argument("--max-batch-size", type=int, default=1024, help="largest batch one infer request may carry (ModelConfig max_batch_size)")
    parser.add_argument("--workers", type=int, default=16, help="threads for blocking work (disk, model loads); calls themselves need none")
    parser.add_argument("--devices", default="CPU,TF", help="default device preference for uploads")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="default precision for uploads: auto (the fastest execution whose parity passes), fp16, fp32, int8")
    parser.add_argument("--performance-hint", type=str.upper, choices=PERFORMANCE_HINTS, default="",
                        help="OpenVINO hint for models that set none at upload: THROUGHPUT (the default: concurrent clients) or LATENCY (one at a time)")
    parser.add_argument("--conversion-timeout", type=float, default=900.0, help="seconds a conversion may take")
    parser.add_argument("--no-warm-converter", dest="warm_converter", action="store_false",
                        help="do not keep a converter process (TensorFlow imported, ~600 MB) ready for the next upload")
    parser.add_argument("--grace-seconds", type=float, default=10.0, help="how long in-flight calls may finish at shutdown")
    parser.add_argument("--allow-unsafe-deserialization", action="store_true",
                        help="allow Keras models whose loading runs Python code (Lambda layers); only for models you trust")
    parser.add_argument("--custom-objects", action="append", default=[], metavar="MODULE",
                        help="a trusted Python module with custom Keras layers/models (its kvserve_register_keras_objects(register), "
                             "or keras.saving.register_keras_serializable on import); repeatable or comma-separated "
                             "(env KVSERVE_CUSTOM_OBJECTS); imported only where models are loaded")
    parser.add_argument("--log-level", default=env("KVSERVE_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING, ERROR")
    add_operations_arguments(parser)
    add_lifecycle_arguments(parser)
    add_scale_out_arguments(parser)
    args = parser.parse_args(argv)
    return Settings(
        repository=args.repository or default_repository(),
        address=args.address,
        port_file=args.port_file,
        http_address=args.http_address,
        http_port_file=args.http_port_file,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        default_devices=tuple(d.strip().upper() for d in args.devices.split(",") if d.strip()),
        default_precision=args.precision,
        conversion_timeout_s=args.conversion_timeout,
        warm_converter=args.warm_converter,
        performance_hint=args.performance_hint,
        grace_seconds=args.grace_seconds,
        allow_unsafe_deserialization=args.allow_unsafe_deserialization,
        custom_objects=_module_names(args.custom_objects or [env(CUSTOM_OBJECTS_ENV, "")]),
        **operations_settings(parser, args),
        config_file=args.config, config_poll_s=args.config_poll_seconds, poll_seconds=args.poll_seconds,
        **scale_out_settings(parser, args),
    ), args.log_level


def _module_names(values: list[str]) -> tuple[str, ...]:
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def export_custom_objects(settings: Settings) -> None:
    """Check that each --custom-objects module can be found (without importing it: that would import Keras into
    kvd) and hand the list to every process that loads models (converter children, the TF backend) through the
    environment they inherit. Raises ValueError naming a module that cannot be found."""
    import importlib.util

    for name in settings.custom_objects:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ValueError(f"--custom-objects: no module named '{name}' on kvd's Python path; install it or add its "
                             "folder to PYTHONPATH")
    if settings.custom_objects:
        os.environ[CUSTOM_OBJECTS_ENV] = ",".join(settings.custom_objects)
    else:
        os.environ.pop(CUSTOM_OBJECTS_ENV, None)


def add_lifecycle_arguments(parser: argparse.ArgumentParser) -> None:
    """Config file and repository poll (docs/configuration.md)."""
    group = parser.add_argument_group("model lifecycle")
    group.add_argument("--config", type=Path, default=os.environ.get("KVSERVE_CONFIG") or None,
                       help="TOML file: version policy, pin, devices, hint, batching, warm-up per model (docs/configuration.md); "
                            "re-read when it changes and on SIGHUP")
    group.add_argument("--config-poll-seconds", type=float, default=2.0, help="how often --config is checked for changes")
    group.add_argument("--poll-seconds", type=float, default=0.0,
                       help="look for versions added, changed or deleted by other processes every N s (0 = off)")


def add_scale_out_arguments(parser: argparse.ArgumentParser) -> None:
    """Models put on disk, serving-only replicas, per-pod compiled cache (docs/scale-out.md)."""
    env = os.environ.get
    group = parser.add_argument_group("scale-out")
    group.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                       help="serve the Keras file, SavedModel or kvd version at PATH as NAME (repeatable; KServe: NAME=/mnt/models); "
                            "converted into the repository at start-up, not again on restart")
    group.add_argument("--read-only", action="store_true", default=env("KVSERVE_READ_ONLY", "") in {"1", "true", "yes"},
                       help="serve only: refuse uploads, deletes and manifest edits (a replica of a shared repository)")
    group.add_argument("--cache-dir", type=Path, default=env("KVSERVE_CACHE_DIR") or None,
                       help="OpenVINO compiled-model cache (default <repository>/.cache; per pod when the repository is shared)")


def scale_out_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, object]:
    from kvserve.server.uploads.provision import ModelPath

    try:
        models = [ModelPath.parse(text) for text in args.model]
    except ValueError as error:
        parser.error(str(error))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        parser.error(f"--model names a model twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return {"models": tuple((m.name, m.path) for m in models), "read_only": args.read_only, "compiled_cache": args.cache_dir}


def add_operations_arguments(parser: argparse.ArgumentParser) -> None:
    """Metrics, security, limits and log format (docs/operations.md, docs/security.md, docs/metrics.md)."""
    env = os.environ.get
    group = parser.add_argument_group("operations")
    group.add_argument("--metrics-address", default=env("KVSERVE_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
                       help=f"host:port of the Prometheus endpoint (default {DEFAULT_METRICS_ADDRESS}; port 0 picks one; '' disables it)")
    group.add_argument("--metrics-port-file", type=Path, help="write the metrics endpoint's bound port here")
    group.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) for TLS on the gRPC and HTTP ports")
    group.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    group.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)")
    group.add_argument("--auth-token-file", type=Path, default=env("KVSERVE_AUTH_TOKEN_FILE") or None,
                       help="bearer tokens, one 'ROLE TOKEN' per line, ROLE read or admin (docs/security.md)")
    group.add_argument("--insecure", action="store_true", help="allow a non-loopback --address without TLS or tokens")
    group.add_argument("--max-uploads", type=int, default=2, help="uploads (and conversions) running at once")
    group.add_argument("--upload-queue-seconds", type=float, default=10.0, help="how long an upload waits for a slot before RESOURCE_EXHAUSTED")
    group.add_argument("--upload-idle-seconds", type=float, default=60.0, help="drop an upload that sends nothing for this long (frees its slot)")
    group.add_argument("--upload-total-seconds", type=float, default=3600.0, help="drop an upload whose bytes take longer than this to arrive")
    group.add_argument("--max-queue", type=int, default=32, help="requests per model waiting for an infer slot before RESOURCE_EXHAUSTED")
    group.add_argument("--max-queue-mb", type=int, default=512, help="MiB of inputs one model's waiting requests may hold before RESOURCE_EXHAUSTED")
    group.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                       help="largest image kvd decodes for an image input, in pixels (checked from its header)")
    group.add_argument("--max-request-pixels", type=int, default=MAX_REQUEST_PIXELS,
                       help="pixels all images of one request may decode to together")
    group.add_argument("--max-decode-pixels", type=int, default=DEFAULT_DECODE_PIXELS,
                       help="pixels all requests may be decoding at once (more wait, then RESOURCE_EXHAUSTED)")
    group.add_argument("--access-log", action="store_true", help="log one line per successful call (failures are always logged)")
    group.add_argument("--max-concurrent-rpcs", type=int, default=256, help="calls admitted at once; more get RESOURCE_EXHAUSTED")
    group.add_argument("--min-free-mb", type=int, default=256,
                       help="refuse uploads while the repository's file system has less free space than this (0: no floor)")
    group.add_argument("--max-unpacked-mb", type=int, default=16384,
                       help="largest size a SavedModel archive may unpack to (also at most --archive-ratio times its own size)")
    group.add_argument("--archive-ratio", type=int, default=20, help="largest unpacked/packed size ratio of an uploaded archive")
    group.add_argument("--child-memory-mb", type=int, default=0,
                       help="address-space limit of converter and worker child processes, in MiB (0: none)")
    group.add_argument("--log-format", choices=FORMATS, default=env("KVSERVE_LOG_FORMAT", "text"), help="text lines or JSON lines")


def operations_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, object]:
    try:
        images = ImageLimits(args.max_image_pixels, args.max_request_pixels, args.max_decode_pixels)
    except ValueError as error:
        parser.error(str(error))
    return {
        "metrics_address": args.metrics_address, "metrics_port_file": args.metrics_port_file,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca,
        "auth_token_file": Path(args.auth_token_file) if args.auth_token_file else None, "insecure": args.insecure,
        "max_uploads": args.max_uploads, "upload_queue_s": args.upload_queue_seconds, "max_queue": args.max_queue,
        "max_queue_bytes": args.max_queue_mb * 1024 * 1024, "upload_idle_s": args.upload_idle_seconds,
        "upload_total_s": args.upload_total_seconds, "access_log": args.access_log,
        "max_concurrent_rpcs": args.max_concurrent_rpcs, "log_format": args.log_format,
        "min_free_bytes": args.min_free_mb * 1024 * 1024, "archive_max_bytes": args.max_unpacked_mb * 1024 * 1024,
        "archive_ratio": args.archive_ratio, "child_memory_bytes": args.child_memory_mb * 1024 * 1024,
        "image_limits": images,
    }


def main(argv: list[str] | None = None) -> int:
    settings, level = parse_args(argv)
    configure(level, settings.log_format)
    log = logging.getLogger("kvserve.server")
    from kvserve.server.app import build, start

    from kvserve.plugins.backends.openvino_devices import forced_execution

    try:
        forced_execution()  # a mistyped KVSERVE_INFERENCE_PRECISION stops kvd here, not at the first load
        export_custom_objects(settings)  # before build: the warm converter child inherits it
        daemon = build(settings)
    except (OSError, ValueError) as error:
        log.error("%s", error)
        return 2
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: do not wait for the grace period
            hurry.set()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    if daemon.watchers is not None:
        signal.signal(signal.SIGHUP, lambda _signum, _frame: daemon.watchers.reload())  # only sets an event
    start(daemon)
    while not stop.wait(0.2):  # a timed wait: the main thread must wake to run the Python signal handler,
        if daemon.fatal.is_set():  # which never happens if the kernel hands the signal to a gRPC thread
            break
    if daemon.fatal.is_set():
        daemon.stop(grace=0)
        return 2
    log.info("shutting down: health NOT_SERVING, new calls refused, running calls get %.0f s", settings.grace_seconds)
    daemon.stop(hurry=hurry)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
