"""Back-pressure: bounded queues in front of each model and around uploads, and dropping work nobody awaits.

Memory stays bounded: gRPC admits at most ``--max-concurrent-rpcs`` calls, each model lets at most
``--max-queue`` requests wait for a free infer slot (more get RESOURCE_EXHAUSTED at once), and at most
``--max-uploads`` uploads run (others wait ``--upload-queue-seconds``, then get RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

from kvserve.server.errors import Cancelled, KvError, ResourceExhausted

DEFAULT_SLOTS = 4  # concurrent infers on a runner that does not say (OpenVINO runners say: nireq)
POLL_S = 0.05


class Call(Protocol):
    """What the data plane needs to know about the caller (a grpc.ServicerContext has both)."""

    def is_active(self) -> bool: ...

    def time_remaining(self) -> float | None: ...


def gone(call: Call | None) -> str:
    """Why nobody awaits this call's answer any more, or "" while someone does."""
    if call is None:
        return ""
    remaining = call.time_remaining()
    if remaining is not None and remaining <= 0:
        return "deadline"
    return "" if call.is_active() else "cancelled"


def dropped(reason: str) -> Cancelled:
    return Cancelled(f"the call was dropped before the model ran: the client's {'deadline passed' if reason == 'deadline' else 'call was cancelled'}")


def runner_slots(runner: Any) -> int:
    """How many infers a runner runs at once: its infer-request pool size, else a small default."""
    return max(1, int(getattr(runner, "nireq", 0) or DEFAULT_SLOTS))


class InferGate:
    """Per model: at most ``max_queue`` requests waiting; per runner: at most ``runner_slots`` running."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._waiting: dict[str, int] = {}
        self._slots: weakref.WeakKeyDictionary[Any, threading.Semaphore] = weakref.WeakKeyDictionary()
        self._by_name: dict[str, threading.Semaphore] = {}

    def waiting(self, model: str) -> int:
        with self._lock:
            return self._waiting.get(model, 0)

    def _semaphore(self, model: str, runner: Any) -> threading.Semaphore:
        """The runner's slots; a plugin runner that cannot be weakly referenced is gated by model name."""
        try:
            return self._slots.setdefault(runner, threading.Semaphore(runner_slots(runner)))
        except TypeError:
            return self._by_name.setdefault(model, threading.Semaphore(runner_slots(runner)))

    @contextmanager
    def slot(self, model: str, runner: Any, call: Call | None = None) -> Iterator[float]:
        """Hold one infer slot of ``runner``; yields the seconds spent queued for it."""
        with self._lock:
            waiting = self._waiting.get(model, 0)
            semaphore = self._semaphore(model, runner)
            if waiting >= self.max_queue:  # full, unless a slot is free right now (then nobody waits)
                if not semaphore.acquire(blocking=False):
                    raise ResourceExhausted(
                        f"model '{model}' already has {waiting} requests queued (kvd --max-queue {self.max_queue}); "
                        "retry with back-off or spread the load"
                    )
                semaphore.release()
            self._waiting[model] = waiting + 1
        started = time.perf_counter()
        try:
            while not semaphore.acquire(timeout=POLL_S):
                reason = gone(call)
                if reason:
                    raise dropped(reason)
        finally:
            with self._lock:
                self._waiting[model] -= 1
                if not self._waiting[model]:
                    del self._waiting[model]
        try:
            yield time.perf_counter() - started
        finally:
            semaphore.release()


class UploadSlots:
    """At most ``limit`` uploads at once; a newcomer waits up to ``queue_s`` for a slot."""

    def __init__(self, limit: int, queue_s: float) -> None:
        self.limit = limit
        self.queue_s = queue_s
        self._semaphore = threading.BoundedSemaphore(max(1, limit))

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._semaphore.acquire(timeout=self.queue_s):
            raise ResourceExhausted(
                f"kvd is already running {self.limit} upload{'s' if self.limit != 1 else ''} (--max-uploads) and none "
                f"finished within {self.queue_s:g} s; try again later"
            )
        try:
            yield
        finally:
            self._semaphore.release()


class Abandon:
    """Set when an upload must stop early (client gone, kvd shutting down); runs its callbacks once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.error: KvError | None = None

    @property
    def is_set(self) -> bool:
        return self.error is not None

    def set(self, error: KvError) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = error
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def check(self) -> None:
        """Raise the reason to stop, if there is one."""
        if self.error is not None:
            raise self.error

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when set (at once if already set); returns a function that unregisters it."""
        with self._lock:
            if self.error is None:
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def _discard(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


class PixelBudget:
    """Process-wide bound on image pixels being decoded at once, so concurrent image requests cannot together
    decode more than ``total`` pixels (each already bounded alone). Waits up to ``wait_s`` for room, then
    RESOURCE_EXHAUSTED."""

    def __init__(self, total: int, wait_s: float = 5.0) -> None:
        self.total = total
        self.wait_s = wait_s
        self.used = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)  # one request alone is bounded by its own budget
        with self._room:
            if not self._room.wait_for(lambda: self.used + pixels <= self.total, timeout=self.wait_s):
                raise ResourceExhausted(f"kvd is decoding {self.used} image pixels already (budget {self.total}); retry shortly")
            self.used += pixels
        try:
            yield
        finally:
            with self._room:
                self.used -= pixels
                self._room.notify_all()


PIXELS = PixelBudget(200_000_000)
