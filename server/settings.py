"""Daemon settings: one dataclass, filled from flags and KVSERVE_* environment variables by ``main``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kvserve.server.ops.limits import ImageLimits

DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:8502"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8501"  # TF Serving's REST port
# Large enough for a batch of 16 299x299x3 float images (17 MB) and a 4k RGB float image (100 MB).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_DEVICES = ("CPU", "TF")
DEFAULT_PRECISION = "auto"
PRECISIONS = ("auto", "fp32", "fp16", "int8")
# OpenVINO performance hints: THROUGHPUT keeps every stream busy under concurrent calls (a shared server);
# LATENCY gives one call all the cores.
PERFORMANCE_HINTS = ("THROUGHPUT", "LATENCY")


def default_repository() -> Path:
    """``KVSERVE_REPOSITORY``, else the user's data dir (``~/.local/share/kvserve/models`` on Linux)."""
    env = os.environ.get("KVSERVE_REPOSITORY")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("kvserve")) / "models"


@dataclass
class Settings:
    repository: Path = field(default_factory=default_repository)
    address: str = DEFAULT_ADDRESS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_upload_bytes: int = 4 * 1024 * 1024 * 1024
    workers: int = 16
    default_devices: tuple[str, ...] = DEFAULT_DEVICES
    default_precision: str = DEFAULT_PRECISION
    allow_unsafe_deserialization: bool = False
    custom_objects: tuple[str, ...] = ()  # trusted modules with custom Keras classes (kvd --custom-objects)
    conversion_timeout_s: float = 900.0
    warm_converter: bool = True
    grace_seconds: float = 10.0
    max_batch_size: int = 1024
    performance_hint: str = ""  # empty: each backend's own (THROUGHPUT for the built-in OpenVINO devices)
    benchmark_timeout_s: float = 1800.0
    port_file: Path | None = None
    # KServe v2 REST + TF Serving REST; "" disables the HTTP port. `kvd` defaults to DEFAULT_HTTP_ADDRESS; a
    # Settings built in code opens no HTTP port unless asked (in-process daemons in tests never collide on 8501).
    http_address: str = ""
    http_port_file: Path | None = None
    # operations (issue 6): metrics, security, limits, logs
    metrics_address: str = DEFAULT_METRICS_ADDRESS  # "" disables the endpoint
    metrics_port_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token_file: Path | None = None
    insecure: bool = False
    max_uploads: int = 2
    upload_queue_s: float = 10.0
    max_queue: int = 32
    max_queue_bytes: int = 512 * 1024 * 1024  # inputs held by one model's queued requests
    upload_idle_s: float = 60.0  # an upload that sends nothing this long (header or chunk) is dropped
    upload_total_s: float = 3600.0  # an upload's bytes must all arrive within this
    access_log: bool = False  # a log line per successful call
    max_concurrent_rpcs: int = 256
    log_format: str = "text"
    # hardening (issue 14): disk floor, archive bounds, child memory
    min_free_bytes: int = 256 * 1024 * 1024  # uploads refused while the repository has less free (--min-free-mb)
    archive_ratio: int = 20  # a SavedModel archive may unpack to at most this many times the upload's size...
    archive_max_bytes: int = 16 * 1024 * 1024 * 1024  # ...and never more than this (--max-unpacked-mb)
    child_memory_bytes: int = 0  # address-space limit of converter/worker children (--child-memory-mb); 0 = none
    image_limits: ImageLimits = field(default_factory=ImageLimits)  # pixels decoded per image/request/at once
    # model lifecycle (issue 13): config file, its poll, repository poll (0 = off)
    config_file: Path | None = None
    config_poll_s: float = 2.0
    poll_seconds: float = 0.0
    # scale-out (issue 15): models put on disk (KServe's /mnt/models), a serving-only replica, a per-pod cache
    models: tuple[tuple[str, Path], ...] = ()  # --model NAME=PATH, converted at start-up unless already stored
    read_only: bool = False  # no uploads, deletes or manifest edits over the API; the shared staging is left alone
    compiled_cache: Path | None = None  # --cache-dir; None: <repository>/.cache

    @property
    def cache_dir(self) -> Path:
        return self.compiled_cache or self.repository / ".cache"
