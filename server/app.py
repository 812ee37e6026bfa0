"""Assembles the daemon: repository, plugins, model manager, servicers, one gRPC server."""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc

from kvserve.plugins.manager import Plugins, load_plugins
from kvserve.proto import grpc_service_pb2_grpc as pb_grpc
from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc
from kvserve.server.dataplane import DataPlane
from kvserve.server.infer_codec import InferCodecInterceptor
from kvserve.server.inference_servicer import InferenceServicer
from kvserve.server.interceptors import ErrorInterceptor
from kvserve.server.kvserve_servicer import KvServeServicer
from kvserve.server.models import ModelManager
from kvserve.server.repository import Repository
from kvserve.server.settings import Settings
from kvserve.server.uploads import UploadPipeline

log = logging.getLogger("kvserve.server")


@dataclass
class Daemon:
    settings: Settings
    server: grpc.Server
    manager: ModelManager
    plugins: Plugins
    port: int

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(self.settings.grace_seconds if grace is None else grace).wait()
        self.manager.close()


def build(settings: Settings) -> Daemon:
    """Create everything and bind the port; nothing is served until ``start``."""
    repository = Repository(settings.repository)
    removed = repository.clean_staging()
    if removed:
        log.info("removed %d leftovers of interrupted uploads or deletes from %s", len(removed), repository.staging_root)
    plugins = load_plugins()
    manager = ModelManager(repository, plugins, settings)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="kvd-rpc"),
                         interceptors=[ErrorInterceptor(), InferCodecInterceptor()], options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(manager, DataPlane(manager), settings), server)
    kv_grpc.add_KvServeServicer_to_server(KvServeServicer(manager, UploadPipeline(repository, manager, settings), plugins), server)
    port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address}: address in use or not available")
    return Daemon(settings, server, manager, plugins, port)


def start(daemon: Daemon) -> None:
    """Serve at once (live), load the repository in the background (ready when done)."""
    daemon.server.start()
    host = daemon.settings.address.rsplit(":", 1)[0]
    log.info("kvd listening on %s:%d, repository %s", host, daemon.port, daemon.settings.repository)
    if daemon.settings.port_file is not None:
        tmp = daemon.settings.port_file.with_suffix(".tmp")
        tmp.write_text(f"{daemon.port}\n")
        os.replace(tmp, daemon.settings.port_file)
    threading.Thread(target=daemon.manager.load_all, name="kvd-startup-load", daemon=True).start()
