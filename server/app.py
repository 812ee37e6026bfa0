"""Assembles the daemon: repository, plugins, model manager, servicers, one grpc.aio server on one event loop.

The loop runs on its own thread (``kvd-loop``); the main thread keeps the signals. Calls never hold a thread:
inference completes through OpenVINO callbacks, blocking work (disk, model loads, uploads) runs on a bounded
pool (``--workers``) or, for uploads and benchmarks, a thread of their own.
"""

from __future__ import annotations

import asyncio
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
from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc
from kvserve.server.api.grpc import inference
from kvserve.server.api.grpc.calls import CallInterceptor
from kvserve.server.api.grpc.inference import InferenceServicer
from kvserve.server.api.grpc import tfserving
from kvserve.server.api.grpc.kvserve import KvServeServicer
from kvserve.server.dataplane import DataPlane
from kvserve.server.ops import health, metrics
from kvserve.server.ops.auth import load_tokens
from kvserve.server.ops.lifecycle import Lifecycle
from kvserve.server.ops.limits import Admission
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
    server: grpc.aio.Server
    manager: ModelManager
    plugins: Plugins
    port: int
    lifecycle: Lifecycle | None = None
    uploads: UploadPipeline | None = None
    metrics_server: Any = None
    metrics_port: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    reporter: health.HealthReporter | None = None
    dataplane: DataPlane | None = None
    http: Any = None  # kvserve.server.api.rest.serve.HttpServer, or None when --http-address is ''
    watchers: Watchers | None = None
    fatal: threading.Event = field(default_factory=threading.Event)  # a --model could not be served: kvd exits 2
    _thread: threading.Thread | None = None
    _http_task: Any = None

    def submit(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the daemon's loop from another thread and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self, grace: float | None = None, hurry: threading.Event | None = None) -> None:
        """Drain: health NOT_SERVING, new calls UNAVAILABLE, uploads abandoned, running calls get ``grace`` s."""
        grace = self.settings.grace_seconds if grace is None else grace
        if self.watchers is not None:
            self.watchers.stop()
        if self.lifecycle is not None:
            self.lifecycle.drain()
            if not self.lifecycle.wait_idle(grace, hurry):
                log.warning("%d calls still running after %.0f s of grace; cancelling them", self.lifecycle.in_flight, grace)
        if self._thread is not None:
            if self.http is not None and self._http_task is not None:
                self.submit(_stop_http(self.http, self._http_task))
            self.submit(self.server.stop(0))
            self.submit(_cancel_the_rest())
        if self.uploads is not None:
            self.uploads.wait_finished(5.0)  # abandoned uploads remove their staging
            self.uploads.launcher.close()
        if self._thread is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.manager.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


async def _cancel_the_rest(timeout_s: float = 5.0) -> None:
    """Tasks the server left behind (batchers' gatherers, streams' readers) end before the loop stops, instead of
    being destroyed pending."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    if rest:
        await asyncio.wait(rest, timeout=timeout_s)


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
    tokens = load_tokens(settings.auth_token_file) if settings.auth_token_file is not None else None
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
    loop = asyncio.new_event_loop()
    loop.set_default_executor(futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="kvd-work"))
    dataplane = DataPlane(manager, Admission(settings.max_queue, settings.max_queue_bytes), settings.max_batch_size,
                          settings.image_limits)
    try:
        server, port = loop.run_until_complete(_server(settings, manager, lifecycle, tokens, reporter, uploads, plugins,
                                                       dataplane, credentials))
    except BaseException:  # release what was started (the warm converter child and its thread), or kvd would not exit
        loop.close()
        uploads.launcher.close()
        manager.close()
        raise
    metrics.watch_models(manager)
    try:
        http = _http_door(settings, manager, dataplane, lifecycle, InferenceServicer(manager, dataplane, settings)) if settings.http_address else None
    except BaseException:
        loop.close()
        uploads.launcher.close()
        manager.close()
        raise
    metrics_server, metrics_port = metrics.serve(settings.metrics_address) if settings.metrics_address else (None, 0)
    watchers = Watchers.create(manager, settings.config_file, settings.config_poll_s, settings.poll_seconds)
    return Daemon(settings, server, manager, plugins, port, lifecycle, uploads, metrics_server, metrics_port, loop, reporter,
                  dataplane, http, watchers)


def _http_door(settings: Settings, manager: ModelManager, dataplane: DataPlane, lifecycle: Lifecycle, servicer: Any) -> Any:
    """The HTTP port (KServe v2 REST, TF Serving REST): same tokens, TLS, limits and drain as gRPC; port bound now.
    It is served on the daemon's loop, beside gRPC, so both doors share one data plane (admission, batchers)."""
    from kvserve.server.api.rest.app import create_app
    from kvserve.server.api.rest.guard import Door
    from kvserve.server.api.rest.serve import HttpServer, bind

    tokens = load_tokens(settings.auth_token_file) if settings.auth_token_file is not None else None
    door = Door(manager, dataplane, settings, lifecycle, tokens, servicer)
    return HttpServer(create_app(door), bind(settings.http_address), settings)


async def _start_http(http: Any) -> Any:
    task = asyncio.ensure_future(http.serve())
    while not http.server.started and not task.done():
        await asyncio.sleep(0.01)
    return task


async def _stop_http(http: Any, task: Any) -> None:
    await http.astop()
    try:
        await asyncio.wait_for(task, 15)
    except Exception:  # noqa: BLE001 - stopping: a stuck HTTP request must not keep kvd up
        log.warning("the HTTP server did not stop in time")


async def _server(settings: Settings, manager: ModelManager, lifecycle: Lifecycle, tokens: dict[bytes, str] | None,
                  reporter: health.HealthReporter, uploads: UploadPipeline, plugins: Plugins, dataplane: DataPlane,
                  credentials: Any) -> tuple[grpc.aio.Server, int]:
    """The aio server with every service, created on the daemon's loop."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(interceptors=[CallInterceptor(manager.has, lifecycle, tokens, settings.access_log)],
                             options=options, maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    inference.add_to_server(InferenceServicer(manager, dataplane, settings), server)
    kv_grpc.add_KvServeServicer_to_server(KvServeServicer(manager, uploads, plugins), server)
    health.add_to_server(reporter, server)
    tfserving.add_to_server(manager, dataplane, server)
    if credentials is not None:
        port = server.add_secure_port(settings.address, credentials)
    else:
        port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address}: address in use or not available")
    return server, port


def _write_port(path: Path | None, port: int) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, path)


def start(daemon: Daemon) -> None:
    """Serve at once (live) on the daemon's loop thread, load the repository in the background (ready when done)."""
    loop = daemon.loop
    assert loop is not None
    daemon._thread = threading.Thread(target=loop.run_forever, name="kvd-loop", daemon=True)
    daemon._thread.start()
    if daemon.reporter is not None:
        daemon.reporter.bind(loop)
    daemon.submit(daemon.server.start())
    settings = daemon.settings
    host = settings.address.rsplit(":", 1)[0]
    log.info("kvd listening on %s:%d (%s%s), repository %s", host, daemon.port, "TLS" if settings.tls_cert else "plaintext",
             ", tokens" if settings.auth_token_file else "", settings.repository)
    if daemon.metrics_server is not None:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_address.rpartition(":")[0], daemon.metrics_port)
    if daemon.http is not None:
        daemon._http_task = daemon.submit(_start_http(daemon.http))
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
