"""Draining: on SIGTERM new calls get UNAVAILABLE while the calls already running get time to finish.

``Lifecycle`` counts calls in flight and runs the drain callbacks (health to NOT_SERVING, uploads abandoned);
``DrainInterceptor`` applies it to every RPC except health checks, which keep answering (NOT_SERVING) so load
balancers see the drain.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import grpc

from kvserve.server.api.grpc.interceptors import refusing, scoped

log = logging.getLogger("kvserve.server")

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class Lifecycle:
    def __init__(self) -> None:
        self._draining = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._on_drain: list[Callable[[], None]] = []

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def on_drain(self, callback: Callable[[], None]) -> None:
        self._on_drain.append(callback)

    def drain(self) -> None:
        """Stop taking calls; run the drain callbacks once."""
        if self._draining.is_set():
            return
        self._draining.set()
        for callback in self._on_drain:
            try:
                callback()
            except Exception:  # noqa: BLE001 - draining goes on
                log.exception("drain callback failed")

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float, hurry: threading.Event | None = None) -> bool:
        """Wait until no call is in flight, at most ``timeout`` s (less if ``hurry`` is set); True when idle."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (hurry is not None and hurry.is_set()):
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True


class DrainInterceptor(grpc.ServerInterceptor):
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if self.lifecycle.draining:
            return refusing(handler, grpc.StatusCode.UNAVAILABLE, "kvd is shutting down; retry on another instance or after it restarts")
        return scoped(handler, handler_call_details.method, lambda method, request, context: self.lifecycle.call())
