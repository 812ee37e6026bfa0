"""Assembles the daemon: repository, plugins, model manager, servicers, one gRPC server."""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kvserve.plugins.manager import Plugins, load_plugins
from kvserve.proto import grpc_service_pb2_grpc as pb_grpc
from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc
from kvserve.server.ops import health, metrics
from kvserve.server.ops.auth import AuthInterceptor, load_tokens
from kvserve.server.api.grpc.calls import CallObserver
from kvserve.server.dataplane import DataPlane
from kvserve.server.api.grpc.infer_codec import InferCodecInterceptor
from kvserve.server.api.grpc.inference import InferenceServicer
from kvserve.server.api.grpc.interceptors import ErrorInterceptor
from kvserve.server.api.grpc.kvserve import KvServeServicer
from kvserve.server.api.grpc import tfserving
from kvserve.server.ops.lifecycle import DrainInterceptor, Lifecycle
from kvserve.server.ops.limits import InferGate
from kvserve.server.models.manager import ModelManager
from kvserve.server.models.repository import Repository
from kvserve.server.models.watchers import Watchers, initial_config
from kvserve.server.uploads.child import remove_orphan_logs
from kvserve.server.ops.security import check_exposure, server_credentials
from kvserve.server.settings import Settings
from kvserve.server.uploads.pipeline import UploadPipeline

log = logging.getLogger("kvserve.server")

SHUTDOWN_MESSAGE = "kvd is shutting down; upload again once it is back"


@dataclass
class Daemon:
    settings: Settings
    server: grpc.Server
    manager: ModelManager
    plugins: Plugins
    port: int
    lifecycle: Lifecycle | None = None
    uploads: UploadPipeline | None = None
    metrics_server: Any = None
    metrics_port: int = 0
    http: Any = None  # kvserve.server.api.rest.serve.HttpServer, or None when --http-address is ''
    watchers: Watchers | None = None
    fatal: threading.Event = field(default_factory=threading.Event)  # a --model could not be served: kvd exits 2

    def stop(self, grace: float | None = None, hurry: threading.Event | None = None) -> None:
        """Drain: health NOT_SERVING, new calls UNAVAILABLE, uploads abandoned, running calls get ``grace`` s."""
        grace = self.settings.grace_seconds if grace is None else grace
        if self.watchers is not None:
            self.watchers.stop()
        if self.lifecycle is not None:
            self.lifecycle.drain()
            if not self.lifecycle.wait_idle(grace, hurry):
                log.warning("%d calls still running after %.0f s of grace; cancelling them", self.lifecycle.in_flight, grace)
        if self.http is not None:
            self.http.stop()
        self.server.stop(0).wait()
        if self.uploads is not None:
            self.uploads.wait_finished(5.0)  # abandoned uploads remove their staging
            self.uploads.launcher.close()
        self.manager.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


def _interceptors(settings: Settings, manager: ModelManager, lifecycle: Lifecycle) -> list[grpc.ServerInterceptor]:
    """Outermost first: observe every call, then authenticate, then refuse while draining, then map errors."""
    chain: list[grpc.ServerInterceptor] = [CallObserver(manager.has)]
    if settings.auth_token_file is not None:
        chain.append(AuthInterceptor(load_tokens(settings.auth_token_file)))
    return [*chain, DrainInterceptor(lifecycle), ErrorInterceptor(), InferCodecInterceptor()]


def _check_can_listen(address: str) -> None:
    """Refuse a busy address before anything starts, in one line (grpc would log its own error line first)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or int(port) == 0:
        return  # grpc reports what it cannot parse; port 0 is always free
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is not "in use"
            probe.bind(sockaddr)
    except OSError as error:
        raise OSError(f"cannot listen on {address}: {error.strerror or error}; stop the other process or pick another "
                      "--address (port 0 picks a free one)") from None


def build(settings: Settings) -> Daemon:
    """Create everything and bind the ports; nothing is served until ``start``.

    Raises OSError (port in use) or ValueError (bad security settings) with a message for the operator.
    """
    check_exposure(settings)
    _check_can_listen(settings.address)
    credentials = server_credentials(settings)
    repository = Repository(settings.repository, settings.compiled_cache)
    # A read-only replica shares the repository with a writer whose uploads are in .staging: leave them be.
    removed = [] if settings.read_only else repository.clean_staging()
    if removed:
        log.info("removed %d leftovers of interrupted uploads or deletes from %s", len(removed), repository.staging_root)
    # The shared .cache belongs to the writer; a read-only replica cleans only a cache of its own (--cache-dir).
    shared_cache = settings.read_only and settings.compiled_cache is None
    removed = ([] if shared_cache else repository.clean_cache()) + remove_orphan_logs()
    if removed:
        log.info("removed %d compiled-model cache entries or logs of deleted, failed or killed work", len(removed))
    config = initial_config(settings.config_file)
    plugins = load_plugins()
    manager = ModelManager(repository, plugins, settings, config)
    lifecycle = Lifecycle()
    reporter = health.HealthReporter(manager)
    uploads = UploadPipeline(repository, manager, settings)
    manager.rebuild = uploads.rebuild
    lifecycle.on_drain(reporter.drain)
    lifecycle.on_drain(lambda: uploads.abandon_all(SHUTDOWN_MESSAGE))
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="kvd-rpc"),
                         interceptors=_interceptors(settings, manager, lifecycle), options=options,
                         maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    dataplane = DataPlane(manager, InferGate(settings.max_queue), settings.max_batch_size)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(manager, dataplane, settings), server)
    kv_grpc.add_KvServeServicer_to_server(KvServeServicer(manager, uploads, plugins), server)
    health.add_to_server(reporter, server)
    try:
        if credentials is not None:
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
    except RuntimeError:  # grpc's "Failed to bind to address"
        port = 0
    if port == 0:  # release what was started (the warm converter child and its thread), or kvd would not exit
        uploads.launcher.close()
        manager.close()
        raise OSError(f"cannot listen on {settings.address}: the address is in use or not available here; stop the other "
                      "process or pick another --address (port 0 picks a free one)")
    tfserving.add_to_server(manager, dataplane, server)
    metrics.watch_models(manager)
    try:
        http = _http_door(settings, manager, dataplane, lifecycle, InferenceServicer(manager, dataplane, settings)) if settings.http_address else None
    except OSError:  # the HTTP port is busy: release what was started, or kvd would not exit
        uploads.launcher.close()
        manager.close()
        raise
    metrics_server, metrics_port = metrics.serve(settings.metrics_address) if settings.metrics_address else (None, 0)
    watchers = Watchers.create(manager, settings.config_file, settings.config_poll_s, settings.poll_seconds)
    return Daemon(settings, server, manager, plugins, port, lifecycle, uploads, metrics_server, metrics_port, http=http, watchers=watchers)


def _http_door(settings: Settings, manager: ModelManager, dataplane: DataPlane, lifecycle: Lifecycle, servicer: Any) -> Any:
    """The HTTP port (KServe v2 REST, TF Serving REST): same tokens, TLS, limits and drain as gRPC; port bound now."""
    from kvserve.server.api.rest.app import create_app
    from kvserve.server.api.rest.guard import Door
    from kvserve.server.api.rest.serve import HttpServer, bind

    tokens = load_tokens(settings.auth_token_file) if settings.auth_token_file is not None else None
    door = Door(manager, dataplane, settings, lifecycle, tokens, servicer)
    return HttpServer(create_app(door), bind(settings.http_address), settings)


def _write_port(path: Path | None, port: int) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, path)


def start(daemon: Daemon) -> None:
    """Serve at once (live), load the repository in the background (ready when done)."""
    daemon.server.start()
    settings = daemon.settings
    host = settings.address.rsplit(":", 1)[0]
    log.info("kvd listening on %s:%d (%s%s), repository %s", host, daemon.port, "TLS" if settings.tls_cert else "plaintext",
             ", tokens" if settings.auth_token_file else "", settings.repository)
    if daemon.metrics_server is not None:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_address.rpartition(":")[0], daemon.metrics_port)
    if daemon.http is not None:
        daemon.http.start_thread()
        log.info("HTTP (KServe v2 REST, TF Serving REST) on %s://%s:%d", "https" if daemon.http.tls else "http",
                 settings.http_address.rpartition(":")[0], daemon.http.port)
        _write_port(settings.http_port_file, daemon.http.port)
    _write_port(settings.metrics_port_file, daemon.metrics_port)
    _write_port(settings.port_file, daemon.port)
    threading.Thread(target=_provision_then_load, args=(daemon,), name="kvd-startup-load", daemon=True).start()


def _provision_then_load(daemon: Daemon) -> None:
    """``--model`` models first (converted only if changed), then the repository; ready once both are done.

    A ``--model`` that cannot be served stops kvd (exit 2, the reason in the log): a pod that serves nothing
    of what it was started for must restart visibly, not report ready.
    """
    if daemon.settings.models and daemon.uploads is not None:
        from kvserve.server.uploads.provision import ModelPath, Provisioner

        provisioner = Provisioner(daemon.manager.repository, daemon.uploads, daemon.settings.default_precision)
        for name, path in daemon.settings.models:
            try:
                log.info("--model %s", provisioner.ensure(ModelPath(name, path)))
            except Exception as error:  # noqa: BLE001 - one clear line, then exit
                log.error("--model %s=%s cannot be served: %s", name, path, str(error).splitlines()[0] if str(error) else type(error).__name__)
                daemon.fatal.set()
                return
    daemon.manager.load_all()
    if daemon.watchers is not None:
        daemon.watchers.start()
