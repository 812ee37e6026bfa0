"""The one bridge from an async front door to the data plane, whichever shape the data plane has.

The HTTP door runs on an event loop. Today ``DataPlane.infer`` and the model manager are synchronous (they
block on OpenVINO and on loads), so they run on a worker thread; once the core's ``DataPlane.infer`` is a
coroutine it is awaited directly. Every door calls through here, so the switch happens in one place.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

T = TypeVar("T")


async def infer(dataplane: Any, name: str, version: str, inputs: Mapping[str, np.ndarray], requested: list[str] | None = None,
                classification: Mapping[str, int] | None = None, deadline: float | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """``(ModelVersion, outputs)`` from the data plane (which decodes images and validates; doors do not)."""
    if inspect.iscoroutinefunction(dataplane.infer):
        return await dataplane.infer(name, version, inputs, requested, classification, deadline=deadline)
    return await asyncio.to_thread(dataplane.infer, name, version, inputs, requested, classification)


async def blocking(function: Callable[..., T], *args: Any) -> T:
    """Run a manager call that may block (a load on demand, disk reads) without stalling the event loop;
    coroutine functions are awaited as they are."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    return await asyncio.to_thread(function, *args)
