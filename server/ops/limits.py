"""Back-pressure: bounded queues in front of each model and around uploads, and dropping work nobody awaits.

Memory stays bounded: gRPC admits at most ``--max-concurrent-rpcs`` calls, each model lets at most
``--max-queue`` requests (and ``--max-queue-mb`` of their inputs) wait for a free infer slot (more get
RESOURCE_EXHAUSTED at once), and at most ``--max-uploads`` uploads run (others wait ``--upload-queue-seconds``,
then get RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from kvserve.proto.images import MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS
from kvserve.server.errors import DeadlineExceeded, KvError, ResourceExhausted

DEFAULT_SLOTS = 4  # concurrent infers on a runner that does not say (OpenVINO runners say: nireq)


def runner_slots(runner: Any) -> int:
    """How many infers a runner runs at once: its infer-request pool size, else a small default."""
    return max(1, int(getattr(runner, "nireq", 0) or DEFAULT_SLOTS))


def deadline_passed(name: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"the call's deadline passed while it waited for model '{name}'; "
                            "give it a longer deadline or send fewer requests at once")


class ModelQueue:
    """One runner's slots and the calls waiting for them (event-loop only: no locks)."""

    __slots__ = ("slots", "running", "waiters", "queued_bytes", "__weakref__")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.queued_bytes = 0


class Admission:
    """Per model: at most ``runner_slots`` calls running, at most ``max_queue`` waiting (and ``max_queued_bytes``
    of their inputs); beyond that RESOURCE_EXHAUSTED at once. Every call the data plane sees is counted here:
    gRPC's aio server no longer holds callers where this cannot see them. Deadlines are honoured while queued.
    """

    def __init__(self, max_queue: int, max_queued_bytes: int = 0) -> None:
        self.max_queue = max_queue
        self.max_queued_bytes = max_queued_bytes
        self._queues: weakref.WeakKeyDictionary[Any, ModelQueue] = weakref.WeakKeyDictionary()
        self._by_name: dict[str, ModelQueue] = {}

    def queue(self, model: str, runner: Any) -> ModelQueue:
        """The runner's queue; a plugin runner that cannot be weakly referenced is queued by model name."""
        try:
            found = self._queues.get(runner)
            if found is None:
                found = self._queues[runner] = ModelQueue(runner_slots(runner))
            return found
        except TypeError:
            return self._by_name.setdefault(model, ModelQueue(runner_slots(runner)))

    def check(self, model: str, line: ModelQueue, nbytes: int = 0) -> None:
        """RESOURCE_EXHAUSTED if one more waiting call (of ``nbytes`` of inputs) would exceed the bounds."""
        if len(line.waiters) >= self.max_queue:
            raise ResourceExhausted(f"model '{model}' already has {len(line.waiters)} requests queued (kvd --max-queue "
                                    f"{self.max_queue}); retry with back-off or spread the load")
        if self.max_queued_bytes and line.waiters and line.queued_bytes + nbytes > self.max_queued_bytes:
            raise ResourceExhausted(f"model '{model}' already holds {line.queued_bytes >> 20} MiB of queued requests "
                                    f"(kvd --max-queue-mb {self.max_queued_bytes >> 20}); retry with back-off")

    async def acquire(self, model: str, line: ModelQueue, nbytes: int = 0, deadline: float | None = None) -> float:
        """Take one slot, waiting in line if all are busy; returns the seconds spent waiting."""
        if line.running < line.slots and not line.waiters:
            line.running += 1
            return 0.0
        self.check(model, line, nbytes)
        started = time.monotonic()
        timeout = None if deadline is None else deadline - started
        if timeout is not None and timeout <= 0:
            raise deadline_passed(model)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.waiters.append(turn)
        line.queued_bytes += nbytes
        try:
            await asyncio.wait_for(turn, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            if turn.done() and not turn.cancelled():  # handed a slot just as it gave up: pass it on
                self.release(line)
            if isinstance(error, asyncio.TimeoutError):
                raise deadline_passed(model) from None
            raise
        finally:
            line.queued_bytes -= nbytes
            try:
                line.waiters.remove(turn)
            except ValueError:
                pass
        return time.monotonic() - started

    @staticmethod
    def release(line: ModelQueue) -> None:
        """Give the slot to the next caller still waiting, else free it."""
        while line.waiters:
            turn = line.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        line.running -= 1


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


DEFAULT_DECODE_PIXELS = 200_000_000


@dataclass(frozen=True)
class ImageLimits:
    """How many pixels kvd decodes: one image, one request, and every request decoding at once (kvd
    --max-image-pixels, --max-request-pixels, --max-decode-pixels). Checked from image headers, before decoding."""

    image: int = MAX_IMAGE_PIXELS
    request: int = MAX_REQUEST_PIXELS
    total: int = DEFAULT_DECODE_PIXELS

    def __post_init__(self) -> None:
        for flag, value in (("--max-image-pixels", self.image), ("--max-request-pixels", self.request),
                            ("--max-decode-pixels", self.total)):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if self.request < self.image or self.total < self.request:
            raise ValueError(f"--max-image-pixels ({self.image}) <= --max-request-pixels ({self.request}) <= "
                             f"--max-decode-pixels ({self.total}) must hold; raise the larger limits too")


PIXELS = PixelBudget(DEFAULT_DECODE_PIXELS)
