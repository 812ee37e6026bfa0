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
        return self._collect("kvserve_register_converters")

    def backends(self) -> list[Any]:
        """Every registered backend, built-ins first; a later backend reusing a device name is skipped."""
        unique: dict[str, Any] = {}
        for backend in self._collect("kvserve_register_backends"):
            if backend.name in unique:
                log.warning("device %s is registered twice; keeping %s, ignoring %s", backend.name,
                            type(unique[backend.name]).__module__, type(backend).__module__)
                continue
            unique[backend.name] = backend
        return list(unique.values())

    def keras_objects(self, register: Any) -> None:
        """Let each plugin register its custom Keras classes and functions: ``register(obj, name=None)``."""
        self._call_each("kvserve_register_keras_objects", register)

    def _collect(self, hook_name: str) -> list[Any]:
        found: list[Any] = []
        self._call_each(hook_name, found.append)
        return found

    def _call_each(self, hook_name: str, register: Any) -> None:
        """Call each plugin's implementation on its own (in registration order), so one that raises is
        reported and skipped instead of taking the others down."""
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            try:
                impl.function(register=register)
            except Exception as error:  # noqa: BLE001 - a broken plugin must not take the host down
                message = f"{hook_name} raised {type(error).__name__}: {error}"
                log.warning("plugin %s: %s", impl.plugin_name, message)
                if all(f.name != impl.plugin_name for f in self.failures):
                    self.failures.append(PluginFailure(impl.plugin_name, message))

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
        errors = {f.name: f.error for f in self.failures}
        for row in rows:
            row["error"] = errors.pop(row["name"], "")
        rows += [{"name": name, "version": "", "hooks": [], "builtin": False, "error": error} for name, error in errors.items()]
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


def _register(plugins: Plugins, name: str, load: Any, version: str) -> bool:
    """Import and register one plugin and validate its hooks; on any failure, record it and leave it out."""
    manager = plugins.manager
    try:
        plugin = load()
        if manager.get_plugin(name) is not None:
            return False
        manager.register(plugin, name=name)
    except Exception as error:  # noqa: BLE001 - a broken plugin must not take the host down
        log.warning("plugin %s failed to load and was skipped: %s", name, error)
        plugins.failures.append(PluginFailure(name, f"{type(error).__name__}: {error}"))
        return False
    try:
        manager.check_pending()  # e.g. a misspelled hook name
    except pluggy.PluginValidationError as error:
        manager.unregister(name=name)
        log.warning("plugin %s was skipped: %s", name, error)
        plugins.failures.append(PluginFailure(name, f"invalid plugin: {error}"))
        return False
    plugins.versions[name] = version
    return True


def load_plugins(extra: tuple[str, ...] = ()) -> Plugins:
    """Register built-ins, then entry points (``KVSERVE_PLUGINS`` restricts which third-party ones load)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager)
    for module_name in DEFAULT_PLUGINS + extra:
        if _register(plugins, module_name, lambda m=module_name: importlib.import_module(m), _builtin_version()):
            plugins.builtin.add(module_name)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if not _allowed(entry_point.name):
            log.info("plugin %s skipped (not in KVSERVE_PLUGINS)", entry_point.name)
            continue
        _register(plugins, entry_point.name, entry_point.load, entry_point.dist.version if entry_point.dist else "")
    return plugins
