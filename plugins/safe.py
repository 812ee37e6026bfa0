"""Calls into plugin objects that must never take the daemon down: a raising backend is reported, not fatal."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from kvserve.plugins.types import Availability, LoadRequest, ModelRejected

log = logging.getLogger("kvserve.plugins")


def availability(backend: Any) -> Availability:
    try:
        return backend.availability()
    except Exception as error:  # noqa: BLE001
        log.warning("backend %s: availability() raised %s", getattr(backend, "name", backend), error)
        return Availability(False, f"the backend plugin failed its availability check: {type(error).__name__}: {error}")


def cannot_serve(backend: Any, manifest: Mapping[str, Any]) -> str | None:
    try:
        return backend.can_serve(manifest)
    except Exception as error:  # noqa: BLE001
        log.warning("backend %s: can_serve() raised %s", getattr(backend, "name", backend), error)
        return f"the backend plugin failed its can_serve check: {type(error).__name__}: {error}"


def refusal(backend: Any, request: LoadRequest) -> str | None:
    """The backend's own refusal of this load (its optional ``admit`` check), else None."""
    admit = getattr(backend, "admit", None)
    if admit is None:
        return None
    try:
        admit(request)
    except ModelRejected as error:
        return str(error)
    except Exception as error:  # noqa: BLE001
        log.warning("backend %s: admit() raised %s", getattr(backend, "name", backend), error)
        return f"the backend plugin failed its admit check: {type(error).__name__}: {error}"
    return None
