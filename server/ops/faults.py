"""Test-only fault injection, read in one place: ``KVSERVE_TEST_FAULT=name[=seconds][,name...]``.

Tests use it to make a window wide enough to hit (a slow inference to SIGTERM into, a delete paused between
its rename and its removal to kill -9 into). Unset in production, every check here is a dict lookup.
"""

from __future__ import annotations

import os
import time

ENV = "KVSERVE_TEST_FAULT"


def _parse(value: str) -> dict[str, float]:
    faults: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, seconds = item.partition("=")
        faults[name] = float(seconds) if seconds else 0.0
    return faults


ACTIVE = _parse(os.environ.get(ENV, ""))


def active(name: str) -> bool:
    return name in ACTIVE


def pause(name: str, default_s: float = 2.0) -> None:
    """Sleep when fault ``name`` is set (for its seconds, else ``default_s``)."""
    if name in ACTIVE:
        time.sleep(ACTIVE[name] or default_s)
