"""The per-model infer gate in isolation: slots per runner, a bounded queue, and dropping calls nobody awaits."""

from __future__ import annotations

import threading
import time

import pytest

from kvserve.server.errors import Cancelled, ResourceExhausted
from kvserve.server.ops.limits import InferGate


class Runner:
    nireq = 1


class SlottedRunner:  # no __weakref__: gated by model name instead
    __slots__ = ()


class Call:
    def __init__(self, remaining: float | None = None, active: bool = True) -> None:
        self.remaining, self.active = remaining, active

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize("runner", [Runner(), SlottedRunner()])
def test_queue_bound_and_drops(runner):
    gate = InferGate(max_queue=1)
    slots = 1 if isinstance(runner, Runner) else 4
    holders = [gate.slot("m", runner) for _ in range(slots)]
    for holder in holders:
        holder.__enter__()  # every slot busy
    waiting = threading.Thread(target=lambda: _use(gate, runner))
    waiting.start()
    deadline = time.monotonic() + 60
    while gate.waiting("m") < 1:
        assert time.monotonic() < deadline, "the second caller never started waiting"
        time.sleep(0.001)
    with pytest.raises(ResourceExhausted, match="already has 1 requests queued"):
        with gate.slot("m", runner):
            pass
    with pytest.raises(Cancelled, match="deadline passed"):
        gate.max_queue = 5
        with gate.slot("m", runner, Call(remaining=0.0)):
            pass
    with pytest.raises(Cancelled, match="cancelled"):
        with gate.slot("m", runner, Call(active=False)):
            pass
    for holder in holders:
        holder.__exit__(None, None, None)
    waiting.join(5)
    assert not waiting.is_alive() and gate.waiting("m") == 0


def _use(gate: InferGate, runner) -> None:
    with gate.slot("m", runner):
        pass
