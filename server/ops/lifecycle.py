"""Draining: on SIGTERM new calls get UNAVAILABLE while the calls already running get time to finish.

``Lifecycle`` counts calls in flight and runs the drain callbacks (health to NOT_SERVING, uploads abandoned);
the call interceptor (``api/grpc/calls.py``) applies it to every RPC except health checks, which keep answering
(NOT_SERVING) so load balancers see the drain.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("kvserve.server")

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
DRAINING_MESSAGE = "kvd is shutting down; retry on another instance or after it restarts"


class Lifecycle:
    def __init__(self) -> None:
        self._draining = threading.Event()
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

    def enter(self) -> None:
        """A call started (event loop; the count is read by ``wait_idle`` on another thread)."""
        self._in_flight += 1

    def leave(self) -> None:
        self._in_flight -= 1

    @contextmanager
    def call(self) -> Iterator[None]:
        """``enter``/``leave`` around a block (the HTTP door, on the same loop)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def wait_idle(self, timeout: float, hurry: threading.Event | None = None) -> bool:
        """Wait until no call is in flight, at most ``timeout`` s (less if ``hurry`` is set); True when idle."""
        deadline = time.monotonic() + timeout
        while self._in_flight > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (hurry is not None and hurry.is_set()):
                return False
            time.sleep(min(remaining, 0.05))
        return True
