"""Builds the plugin manager: built-ins first (through the same path as third-party plugins), then the
``kvserve`` entry-point group. A plugin that fails to import is recorded and skipped, never fatal.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from kvserve.plugins import hookspecs

log = logging.getLogger("kvserve.plugins")

ENTRY_POINT_GROUP = "kvserve"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "kvserve.plugins.converters.keras_openvino",
    "kvserve.plugins.backends.openvino_devices",
    "kvserve.plugins.backends.tensorflow_fallback",
)


@dataclass
class PluginFailure:
    name: str
    error: str


@dataclass
class Plugins:
    """The loaded plugin manager plus what it holds, with failures kept for ``kvctl plugins``."""

    manager: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    builtin: set[str] = field(default_factory=set)
    versions: dict[str, str] = field(default_factory=dict)

    def converters(self) -> list[Any]:
        found: list[Any] = []
        self.manager.hook.kvserve_register_converters(register=found.append)
        return found

    def backends(self) -> list[Any]:
        found: list[Any] = []
        self.manager.hook.kvserve_register_backends(register=found.append)
        return found

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, plugin in self.manager.list_name_plugin():
            rows.append(
                {
                    "name": name,
                    "version": self.versions.get(name, ""),
                    "hooks": sorted(h.name for h in self.manager.get_hookcallers(plugin) or []),
                    "builtin": name in self.builtin,
                    "error": "",
                }
            )
        rows += [{"name": f.name, "version": "", "hooks": [], "builtin": False, "error": f.error} for f in self.failures]
        return rows


def _builtin_version() -> str:
    try:
        from importlib.metadata import version

        return version("kvserve")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0+local"


def _allowed(name: str) -> bool:
    allow = os.environ.get("KVSERVE_PLUGINS")
    if allow is None:
        return True
    return name in {item.strip() for item in allow.split(",") if item.strip()}


def load_plugins(extra: tuple[str, ...] = ()) -> Plugins:
    """Register built-ins, then entry points (``KVSERVE_PLUGINS`` restricts which third-party ones load)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager)
    for module_name in DEFAULT_PLUGINS + extra:
        try:
            manager.register(importlib.import_module(module_name), name=module_name)
            plugins.builtin.add(module_name)
            plugins.versions[module_name] = _builtin_version()
        except Exception as error:  # noqa: BLE001 - a broken plugin must not take the host down
            log.warning("plugin %s failed to load: %s", module_name, error)
            plugins.failures.append(PluginFailure(module_name, f"{type(error).__name__}: {error}"))
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if not _allowed(entry_point.name):
            log.info("plugin %s skipped (not in KVSERVE_PLUGINS)", entry_point.name)
            continue
        try:
            plugin = entry_point.load()
            if manager.get_plugin(entry_point.name) is None:
                manager.register(plugin, name=entry_point.name)
                plugins.versions[entry_point.name] = entry_point.dist.version if entry_point.dist else ""
        except Exception as error:  # noqa: BLE001
            log.warning("plugin %s failed to load and was skipped: %s", entry_point.name, error)
            plugins.failures.append(PluginFailure(entry_point.name, f"{type(error).__name__}: {error}"))
    manager.check_pending()
    return plugins
