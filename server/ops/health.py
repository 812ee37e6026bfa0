"""The standard ``grpc.health.v1`` service and server reflection.

Service ``""`` is the whole server: NOT_SERVING until the start-up load has finished (every model found is
loaded or failed with a recorded reason), SERVING after, NOT_SERVING again once draining. Service ``<model>``
is SERVING while the model has a ready version (a reload keeps the old one serving until the new one is in).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kvserve.proto import _pool
from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import tensorflow_serving_pb2 as tfs
from kvserve.proto import kvserve_service_pb2 as kv
from kvserve.server.models.manager import READY, ModelManager

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Keeps the health servicer in step with the model manager."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.servicer = health.HealthServicer()
        self.servicer.set("", NOT_SERVING)
        manager.subscribe(self.update)
        if manager.startup_complete.is_set():
            self.update("")

    def update(self, name: str) -> None:
        """``name`` changed; ``""`` means start-up finished, so every model is (re)reported."""
        entries = self.manager.entries()
        ready = {e.name for e in entries if e.state == READY}
        if not name:
            self.servicer.set("", SERVING if self.manager.ready() else NOT_SERVING)
        for model in ({name} if name else {e.name for e in entries}):
            self.servicer.set(model, SERVING if model in ready else NOT_SERVING)

    def drain(self) -> None:
        """Everything NOT_SERVING, for good (the process is going away)."""
        self.servicer.enter_graceful_shutdown()


def add_to_server(reporter: HealthReporter, server: grpc.Server) -> None:
    """Register health and reflection (for the v2, kvserve.v1 and health services)."""
    health_pb2_grpc.add_HealthServicer_to_server(reporter.servicer, server)
    # Our stubs live in kvserve's private descriptor pool; reflection answers from it, so health's and
    # reflection's own files are added there too.
    _pool.add_file(health_pb2.DESCRIPTOR.serialized_pb)
    _pool.add_file(reflection_pb2.DESCRIPTOR.serialized_pb)
    names = (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        kv.DESCRIPTOR.services_by_name["KvServe"].full_name,
        tfs.DESCRIPTOR.services_by_name["PredictionService"].full_name,
        tfs.DESCRIPTOR.services_by_name["ModelService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server, pool=_pool.POOL)
