"""Version lifecycle operations the RPC layer calls (plain blocking functions: an async servicer offloads them
to a thread): delete under the repository lock, pin / unpin / rollback."""

from __future__ import annotations

from typing import Any

from kvserve.server.errors import InvalidArgument, Unavailable
from kvserve.server.models.manager import ModelManager
from kvserve.server.models.repository import parse_version


def delete(manager: ModelManager, name: str, version: int | None) -> list[int]:
    """Remove stored versions and forget them in one step under the repository lock (an upload of the same
    name publishes and installs wholly before or after); then the next version the policy wants serves."""
    with manager.repository.locked():
        removed = manager.repository.delete(name, version)
        manager.forget(name, removed, resync=False)
    if manager.repository.versions(name):
        manager.sync(name)
    return removed


def pin(manager: ModelManager, name: str, action: str, version: str = "") -> dict[str, Any]:
    """``action`` is pin (needs ``version``), unpin or rollback; returns the PinResponse fields."""
    if action == "pin":
        if not version:
            raise InvalidArgument("pin needs a version: kvctl pin NAME VERSION")
        entry = manager.pin(name, parse_version(version))
        message = f"model '{name}' pinned to version {entry.version}"
    elif action == "unpin":
        manager.unpin(name)
        message = f"model '{name}' unpinned"
    elif action == "rollback":
        entry = manager.rollback(name)
        message = f"model '{name}' rolled back to version {entry.version} (pinned; 'kvctl unpin {name}' undoes it)"
    else:
        raise InvalidArgument(f"unknown pin action {action!r}; use pin, unpin or rollback")
    try:
        serving = str(manager.default_version(name).version)
    except Unavailable:
        serving = ""
    pinned = manager.pinned(name)
    return {"name": name, "serving": serving, "pinned": str(pinned) if pinned else "", "message": message}
