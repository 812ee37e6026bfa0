"""Per-model dynamic batching: gather concurrent requests into one runner call, split the answer per caller.

As Triton's dynamic batcher and MLServer's adaptive batching: a batch leaves when it holds ``max_batch_size``
rows, reaches a preferred size, or its oldest request has waited ``max_queue_delay``; and at once when a slot
frees up after a busy spell (the queue has already waited). Requests are copied straight into the batch
tensors (one copy in); outputs are split back as views of the runner's arrays. A batch that fails is retried
request by request, so a bad request fails alone. Deadlines are honoured while queued (DEADLINE_EXCEEDED).

Off unless a model's settings turn it on (``kvctl configure NAME --max-batch N --max-delay-ms D``): waiting
for company only pays when calls arrive together, and costs up to ``max_queue_delay`` when they do not.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from kvserve.plugins.types import TensorSpec, infer_async
from kvserve.server.errors import InvalidArgument, ResourceExhausted
from kvserve.server.ops.limits import Admission, ModelQueue, deadline_passed

# The delay `kvctl configure NAME --max-batch N` sets without --max-delay-ms: 0 gathers only what is already
# queued when a slot frees (never waits for company). Measured on the digits CNN (docs/benchmarks.md): 1-2 ms
# raised p50 at concurrency 1 from ~2.5 to 4.4-5.8 ms and bought no throughput at 8/16; 0 kept p50 as with
# batching off. A larger model that gains from bigger batches can ask for a delay.
DEFAULT_QUEUE_DELAY_MS = 0.0
IDLE_EXIT_S = 5.0  # a batcher's task ends after this long without requests (started again on the next one)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    preferred_sizes: tuple[int, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> "BatchPolicy | None":
        """The manifest's ``dynamic_batching`` entry, or None when batching is off."""
        if not settings or int(settings.get("max_batch_size", 0)) < 2:
            return None
        return cls(int(settings["max_batch_size"]), float(settings.get("max_queue_delay_ms", 0.0)) / 1000.0,
                   tuple(sorted(int(s) for s in settings.get("preferred_batch_sizes", ()))))

    @staticmethod
    def checked(max_batch_size: int, max_queue_delay_ms: float, preferred: list[int], inputs: list[TensorSpec],
                outputs: list[TensorSpec]) -> dict[str, Any] | None:
        """Validate a user's request into the manifest entry (None turns batching off)."""
        if max_batch_size in (0, 1):
            return None
        if max_batch_size < 0 or max_batch_size > 4096:
            raise InvalidArgument(f"--max-batch must be 0 (off) or 2..4096, got {max_batch_size}")
        if not 0 <= max_queue_delay_ms <= 1000:
            raise InvalidArgument(f"--max-delay-ms must be between 0 and 1000, got {max_queue_delay_ms:g}")
        if any(not 1 <= size <= max_batch_size for size in preferred):
            raise InvalidArgument(f"preferred batch sizes must lie between 1 and --max-batch {max_batch_size}, got {preferred}")
        if not batchable(inputs, outputs):
            raise InvalidArgument("this model has a fixed batch dimension (inputs and outputs must all start with -1); "
                                  "dynamic batching cannot serve it")
        return {"max_batch_size": max_batch_size, "max_queue_delay_ms": float(max_queue_delay_ms),
                "preferred_batch_sizes": sorted(set(preferred))}


def batchable(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    """Whether requests can be stacked on the first dimension (every tensor's batch dimension is dynamic)."""
    return bool(inputs) and all(spec.shape and spec.shape[0] < 0 and spec.datatype != "BYTES" for spec in inputs + outputs)


class _Request:
    __slots__ = ("inputs", "rows", "deadline", "done", "key")

    def __init__(self, inputs: Mapping[str, np.ndarray], rows: int, deadline: float | None, done: asyncio.Future[Any]) -> None:
        self.inputs = inputs
        self.rows = rows
        self.deadline = deadline
        self.done = done
        # requests stack only with others of the same per-row shapes and dtypes
        self.key = tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(inputs.items()))


class Batcher:
    """Batches for one runner; its slots come from the model's admission line, so batches and plain calls share them."""

    def __init__(self, name: str, runner: Any, policy: BatchPolicy, admission: Admission, line: ModelQueue) -> None:
        self.name = name
        self.runner = runner
        self.policy = policy
        self.admission = admission
        self.line = line
        self._pending: deque[_Request] = deque()
        self._rows = 0
        self._arrived = asyncio.Event()
        self._filling: asyncio.Future[None] | None = None  # set while a batch waits for company
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def infer(self, inputs: Mapping[str, np.ndarray], rows: int, deadline: float | None = None) -> dict[str, np.ndarray]:
        """All outputs for one request's ``rows``, computed together with whatever else is queued."""
        if rows > self.policy.max_batch_size:  # too big to share a batch: runs alone on a slot
            await self.admission.acquire(self.name, self.line, deadline=deadline)
            try:
                return await infer_async(self.runner, dict(inputs), None)
            finally:
                self.admission.release(self.line)
        if len(self._pending) >= self.admission.max_queue:
            raise ResourceExhausted(f"model '{self.name}' already has {len(self._pending)} requests queued for batching "
                                    f"(kvd --max-queue {self.admission.max_queue}); retry with back-off")
        done: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(inputs, rows, deadline, done))
        self._rows += rows
        self._arrived.set()
        if self._filling is not None and self._full():
            _wake(self._filling)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._gather(), name=f"batcher-{self.name}")
        if deadline is None:
            return await done  # the caller cancelled: so is ``done`` (the gatherer skips it, or drops its answer)
        try:
            return await asyncio.wait_for(done, deadline - time.monotonic())
        except asyncio.TimeoutError:  # wait_for cancelled ``done``: still queued, the gatherer skips it
            raise deadline_passed(self.name) from None

    async def _gather(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), IDLE_EXIT_S)
                except asyncio.TimeoutError:
                    if not self._pending:
                        self._task = None
                        return
                continue
            await self.admission.acquire(self.name, self.line)
            try:
                await self._fill()
                batch = self._take()
            except BaseException:
                self.admission.release(self.line)
                raise
            if batch:
                asyncio.create_task(self._run(batch))
            else:
                self.admission.release(self.line)

    def _full(self) -> bool:
        return self._rows >= self.policy.max_batch_size or self._rows in self.policy.preferred_sizes

    async def _fill(self) -> None:
        """Wait for more requests until the batch is full, a preferred size, or the oldest has waited long enough:
        one future and one timer per batch (``infer`` wakes it when the batch fills), nothing per arrival."""
        delay = self.policy.max_queue_delay_s
        if not self._pending or delay <= 0 or self._full():
            return
        loop = asyncio.get_running_loop()
        self._filling = filling = loop.create_future()
        timer = loop.call_later(delay, _wake, filling)
        try:
            await filling
        finally:
            timer.cancel()
            self._filling = None

    def _take(self) -> list[_Request]:
        """Requests for one batch: the oldest live request and those after it that stack with it, up to the limit."""
        now = time.monotonic()
        batch: list[_Request] = []
        rows = 0
        kept: deque[_Request] = deque()
        while self._pending:
            request = self._pending.popleft()
            if request.done.done():  # its caller left or timed out
                self._rows -= request.rows
                continue
            if request.deadline is not None and request.deadline <= now:
                self._rows -= request.rows
                request.done.set_exception(deadline_passed(self.name))
                continue
            if (batch and request.key != batch[0].key) or rows + request.rows > self.policy.max_batch_size:
                kept.append(request)
                continue
            batch.append(request)
            rows += request.rows
            self._rows -= request.rows
        self._pending = kept
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        try:
            if len(batch) == 1:
                await _answer(batch[0], infer_async(self.runner, dict(batch[0].inputs), None))
                return
            try:
                outputs = await infer_async(self.runner, _stack(batch), None)
            except Exception:  # noqa: BLE001 - find the culprit: every request on its own
                for request in batch:
                    await _answer(request, infer_async(self.runner, dict(request.inputs), None))
                return
            start = 0
            for request in batch:
                end = start + request.rows
                if not request.done.done():
                    request.done.set_result({name: array[start:end] for name, array in outputs.items()})
                start = end
        finally:
            self.admission.release(self.line)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _stack(batch: list[_Request]) -> dict[str, np.ndarray]:
    """One tensor per input with every request's rows written straight into it."""
    total = sum(request.rows for request in batch)
    stacked: dict[str, np.ndarray] = {}
    for name, first in batch[0].inputs.items():
        target = np.empty((total, *first.shape[1:]), dtype=first.dtype)
        start = 0
        for request in batch:
            target[start:start + request.rows] = request.inputs[name]
            start += request.rows
        stacked[name] = target
    return stacked


async def _answer(request: _Request, work: Any) -> None:
    try:
        result = await work
    except Exception as error:  # noqa: BLE001 - the caller's own error, raised in its own call
        if not request.done.done():
            request.done.set_exception(error)
        return
    if not request.done.done():
        request.done.set_result(result)
