"""Prometheus metrics: what is measured, and the HTTP endpoint that serves them (``kvd --metrics-address``).

Measured in three places, each the one place where the thing happens: every RPC in ``calls.CallObserver``
(count by status code, total latency, in flight), each inference in the data plane (queue and inference time,
dropped work), each upload in the upload pipeline (duration, conversion time, failures by stage). Model
states are read from the model manager at scrape time. Names and labels: docs/metrics.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kvserve.server.models.manager import ModelManager

log = logging.getLogger("kvserve.server.ops.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UPLOAD_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

REQUESTS = Counter("kvserve_requests", "RPCs answered, by method, model, version and gRPC status code",
                   ["method", "model", "version", "code"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("kvserve_request_duration_seconds", "Time from receiving an RPC to answering it",
                            ["method", "model", "version"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
IN_FLIGHT = Gauge("kvserve_inflight_requests", "RPCs being handled now", ["method", "model"], registry=REGISTRY)
QUEUE_SECONDS = Histogram("kvserve_request_queue_seconds", "Time an inference waited for a free infer slot of its model",
                          ["model", "version"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
INFERENCE_SECONDS = Histogram("kvserve_request_inference_seconds", "Time the model itself ran for one request",
                              ["model", "version"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
DROPPED = Counter("kvserve_requests_dropped", "Inferences dropped before the model ran because nobody awaited them",
                  ["model", "reason"], registry=REGISTRY)
UPLOAD_SECONDS = Histogram("kvserve_upload_duration_seconds", "Whole uploads: receive, convert, verify, load, publish",
                           ["outcome"], buckets=UPLOAD_BUCKETS, registry=REGISTRY)
CONVERSION_SECONDS = Histogram("kvserve_conversion_duration_seconds", "Converter child runs (convert and verify)",
                               ["outcome"], buckets=UPLOAD_BUCKETS, registry=REGISTRY)
UPLOAD_FAILURES = Counter("kvserve_upload_failures", "Uploads that failed, by the stage they failed in and status code",
                          ["stage", "code"], registry=REGISTRY)
UPLOADS_IN_PROGRESS = Gauge("kvserve_uploads_in_progress", "Uploads running now", registry=REGISTRY)


class ModelStates(Collector):
    """``kvserve_model_ready`` and ``kvserve_models_loaded``, read from the model manager when scraped."""

    def __init__(self, manager: "ModelManager") -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily("kvserve_model_ready", "1 when the model version is loaded and serving, else 0",
                                  labels=["model", "version", "backend"])
        loaded = 0
        for entry in self.manager.entries():
            is_ready = entry.state == "READY"
            loaded += is_ready
            ready.add_metric([entry.name, str(entry.version), entry.backend], 1.0 if is_ready else 0.0)
        yield ready
        yield GaugeMetricFamily("kvserve_models_loaded", "Model versions loaded and serving", value=loaded)


_watched: list[ModelStates] = []


def watch_models(manager: "ModelManager") -> None:
    """Report ``manager``'s models (replacing an earlier manager's, for in-process tests)."""
    while _watched:
        REGISTRY.unregister(_watched.pop())
    _watched.append(ModelStates(manager))
    REGISTRY.register(_watched[0])


def serve(address: str) -> tuple[object, int]:
    """Start the HTTP endpoint on ``host:port`` (port 0 picks one); returns (server, bound port)."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        server, _thread = start_http_server(int(port), addr=host, registry=REGISTRY)
    except ValueError:
        raise OSError(f"invalid --metrics-address {address!r}: use host:port, e.g. 127.0.0.1:8502") from None
    except OSError as error:
        raise OSError(f"cannot serve metrics on {address}: {error.strerror or error}; pass --metrics-address host:port, or '' to disable") from None
    return server, server.server_port
