"""Per-model admission in isolation: slots per runner, a bounded queue, deadlines while queued, hand-over."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvserve.server.errors import DeadlineExceeded, ResourceExhausted
from kvserve.server.ops.limits import Admission


class Runner:
    nireq = 1


class SlottedRunner:  # no __weakref__: queued by model name instead
    __slots__ = ()


@pytest.mark.parametrize("runner", [Runner(), SlottedRunner()])
def test_queue_bound_deadline_and_hand_over(runner):
    async def scenario() -> None:
        admission = Admission(max_queue=1)
        line = admission.queue("m", runner)
        for _ in range(line.slots):
            await admission.acquire("m", line)  # every slot busy
        waiter = asyncio.create_task(admission.acquire("m", line))
        await asyncio.sleep(0)
        assert len(line.waiters) == 1
        with pytest.raises(ResourceExhausted, match="already has 1 requests queued"):
            await admission.acquire("m", line)
        admission.max_queue = 5
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await admission.acquire("m", line, deadline=time.monotonic() + 0.05)
        assert len(line.waiters) == 1  # the expired one left the line
        admission.release(line)  # hands the slot to the waiter
        await asyncio.wait_for(waiter, 5)
        assert line.running == line.slots and not line.waiters
        for _ in range(line.slots):
            admission.release(line)
        assert line.running == 0

    asyncio.run(scenario())


def test_queued_bytes_are_bounded():
    async def scenario() -> None:
        admission = Admission(max_queue=10, max_queued_bytes=100)
        line = admission.queue("m", Runner())
        await admission.acquire("m", line)
        first = asyncio.create_task(admission.acquire("m", line, nbytes=80))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="MiB of queued requests"):
            await admission.acquire("m", line, nbytes=80)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert line.queued_bytes == 0 and not line.waiters

    asyncio.run(scenario())
