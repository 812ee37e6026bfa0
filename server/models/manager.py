"""The model manager: which versions are loaded, on which backend, and why; name/version -> runner.

Policy: the latest version of every model is loaded at start-up and after each upload (the previous one is
then unloaded); an older version named explicitly in a request is loaded on demand. A version that could not be
loaded stays listed with its reason, so readiness and RepositoryIndex tell the truth.

A request holds a lease on the version it runs (``lease``): a version replaced by a reload or a new upload
keeps answering the requests already on it and its runner is closed when the last of them is done.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from kvserve.plugins import safe
from kvserve.plugins.manager import Plugins
from kvserve.plugins.types import LoadRequest, Runner, TensorSpec
from kvserve.server.errors import FailedPrecondition, NotFound, Unavailable
from kvserve.server.models.repository import NAME_PATTERN, Repository, parse_version
from kvserve.server.settings import Settings

log = logging.getLogger("kvserve.server.models.manager")

READY = "READY"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelVersion:
    """One version's serving state. ``reason`` says where it runs and why, or why it does not."""

    name: str
    version: int
    manifest: dict[str, Any]
    state: str = UNAVAILABLE
    reason: str = ""
    backend: str = ""
    runner: Runner | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    unloaded: bool = False  # by RepositoryModelUnload: stays down until loaded explicitly
    users: int = field(default=0, repr=False, compare=False)  # requests running on it (leases)
    retired: bool = field(default=False, repr=False, compare=False)  # replaced or unloaded: close when unused

    @classmethod
    def from_manifest(cls, name: str, version: int, manifest: dict[str, Any]) -> "ModelVersion":
        return cls(name, version, manifest, inputs=[TensorSpec.from_dict(t) for t in manifest["inputs"]],
                   outputs=[TensorSpec.from_dict(t) for t in manifest["outputs"]])


class ModelManager:
    def __init__(self, repository: Repository, plugins: Plugins, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self.backends = {b.name: b for b in plugins.backends()}
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._lock = threading.RLock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._listeners: list[Callable[[str], None]] = []
        self.startup_complete = threading.Event()

    # --- change notification ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after a model's versions or states change; ``""`` when start-up completes."""
        self._listeners.append(listener)

    def _notify(self, name: str) -> None:
        for listener in self._listeners:
            try:
                listener(name)
            except Exception:  # noqa: BLE001 - an observer never breaks serving
                log.exception("model change listener failed for %r", name)

    # --- loading ------------------------------------------------------------------------------------
    def open_runner(self, model_dir: Path, manifest: Mapping[str, Any], devices: list[str] | None = None) -> tuple[Runner, str, str]:
        """Load on the first backend in the preference list that is available and can serve the model.

        Returns (runner, backend name, reason). Raises FailedPrecondition listing why each device was skipped.
        """
        preference = devices or list(manifest.get("devices") or self.settings.default_devices)
        skipped: list[str] = []
        inputs = [TensorSpec.from_dict(t) for t in manifest["inputs"]]
        outputs = [TensorSpec.from_dict(t) for t in manifest["outputs"]]
        for device in preference:
            backend = self.backends.get(device)
            if backend is None:
                skipped.append(f"{device}: no backend plugin provides it")
                continue
            availability = safe.availability(backend)
            if not availability.available:
                skipped.append(f"{device} unavailable: {availability.reason}")
                continue
            cannot = safe.cannot_serve(backend, manifest)
            if cannot:
                skipped.append(f"{device} cannot serve it: {cannot}")
                continue
            try:
                runner = backend.load(LoadRequest(model_dir, manifest, inputs, outputs, self.repository.cache_dir,
                                                  config=self.runtime_config(manifest),
                                                  allow_unsafe_deserialization=self.settings.allow_unsafe_deserialization))
            except Exception as error:  # noqa: BLE001 - try the next device, keep the reason
                log.warning("loading %s on %s failed: %s", model_dir, device, error)
                skipped.append(f"{device} failed to load it: {str(error).splitlines()[0][:300] if str(error) else type(error).__name__}")
                continue
            execution = getattr(runner, "execution_precision", "")
            served = f"served by {device}" + (f" ({execution} execution)" if execution else "")
            return runner, device, "; ".join(skipped + [served])
        raise FailedPrecondition("no device could serve the model: " + "; ".join(skipped) + f" (preference: {','.join(preference)})")

    def runtime_config(self, manifest: Mapping[str, Any]) -> dict[str, str]:
        """Device properties for one model: its own performance hint, else kvd's --performance-hint, else none
        (each backend keeps its own default: THROUGHPUT for the built-in OpenVINO devices)."""
        hint = manifest.get("performance_hint") or self.settings.performance_hint
        return {"PERFORMANCE_HINT": hint} if hint else {}

    def install(self, entry: ModelVersion, unload_older: bool = True) -> None:
        """Make a loaded version visible; with ``unload_older`` the versions it supersedes are released."""
        with self._lock:
            versions = self._models.setdefault(entry.name, {})
            old = versions.get(entry.version)
            versions[entry.version] = entry
            released = [old] if old is not None and old is not entry else []
            if unload_older:
                for number, other in list(versions.items()):
                    if number < entry.version:
                        released.append(versions.pop(number))
        for other in released:
            self._close(other)
        self._notify(entry.name)

    def load(self, name: str, version: int | None = None, devices: list[str] | None = None) -> ModelVersion:
        """Load (or reload) one version from the repository; latest when ``version`` is None."""
        versions = self.repository.versions(name)
        if not versions:
            raise NotFound(self.not_found_message(name))
        number = versions[-1] if version is None else version
        lock = self._load_locks.setdefault((name, number), threading.Lock())
        with lock:
            manifest = self.repository.read_manifest(name, number)
            entry = ModelVersion.from_manifest(name, number, manifest)
            previous = self._find(name, number)
            if previous is not None and previous.state == READY and devices is None:
                return previous
            try:
                entry.runner, entry.backend, entry.reason = self.open_runner(self.repository.version_dir(name, number), manifest, devices)
                entry.state = READY
            except FailedPrecondition as error:
                entry.state, entry.reason = UNAVAILABLE, str(error)
                if previous is None or previous.state != READY:
                    self.install(entry, unload_older=False)
                raise
            self.install(entry, unload_older=version is None)
            log.info("loaded %s version %d: %s", name, number, entry.reason)
            return entry

    def load_all(self) -> None:
        """Start-up: load the latest version of every model; failures are recorded, never fatal."""
        try:
            for name in self.repository.names():
                try:
                    self.load(name)
                except Exception as error:  # noqa: BLE001
                    log.error("model %s could not be loaded at start-up: %s", name, error)
        finally:
            self.startup_complete.set()
            self._notify("")

    def unload(self, name: str, version: int | None = None) -> list[int]:
        with self._lock:
            versions = self._models.get(name, {})
            numbers = [version] if version is not None else list(versions)
            released = [versions.pop(n) for n in numbers if n in versions]
            for entry in released:
                unloaded = ModelVersion(entry.name, entry.version, entry.manifest, UNAVAILABLE, "unloaded; load it with RepositoryModelLoad",
                                        inputs=entry.inputs, outputs=entry.outputs, unloaded=True)
                versions[entry.version] = unloaded
        for entry in released:
            self._close(entry)
        self._notify(name)
        return [e.version for e in released]

    def forget(self, name: str, versions: list[int]) -> None:
        """After a delete: drop the versions entirely."""
        with self._lock:
            table = self._models.get(name, {})
            released = [table.pop(n) for n in versions if n in table]
            if not table:
                self._models.pop(name, None)
        for entry in released:
            self._close(entry)
        self._notify(name)

    def refresh_manifest(self, name: str, version: int, manifest: dict[str, Any]) -> None:
        """A stored manifest changed (preprocessing, labels): serve with the new one, no reload needed."""
        with self._lock:
            entry = self._models.get(name, {}).get(version)
            if entry is not None:
                entry.manifest = manifest

    def close(self) -> None:
        with self._lock:
            entries = [e for versions in self._models.values() for e in versions.values()]
            self._models.clear()
        for entry in entries:
            self._close(entry)

    # --- lookup -------------------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        """The ready version to serve, loading an explicitly named older version on demand."""
        number = parse_version(version) if version else None
        with self._lock:
            table = self._models.get(name)
        if not NAME_PATTERN.fullmatch(name) or (not table and not self.repository.versions(name)):
            raise NotFound(self.not_found_message(name))
        if number is None:
            ready = [v for v in (table or {}).values() if v.state == READY]
            if ready:
                return max(ready, key=lambda v: v.version)
            known = sorted((table or {}).values(), key=lambda v: v.version)
            reason = known[-1].reason if known else "not loaded"
            raise Unavailable(f"model '{name}' is not ready: {reason}")
        entry = (table or {}).get(number)
        if entry is not None and entry.state == READY:
            return entry
        if number not in self.repository.versions(name):
            raise NotFound(f"model '{name}' has no version {number}; versions: {', '.join(map(str, self.repository.versions(name)))}")
        if entry is not None and entry.unloaded:
            raise Unavailable(f"model '{name}' version {number} is {entry.reason}")
        try:
            return self.load(name, number)
        except FailedPrecondition as error:
            raise Unavailable(f"model '{name}' version {number} is not ready: {error}") from None

    @contextmanager
    def lease(self, entry: ModelVersion) -> Iterator[Runner]:
        """``entry``'s runner, kept open until the block ends (a reload or upload may retire it meanwhile).

        If ``entry`` was retired since it was looked up (a reload of the same version), the version now
        installed in its place is leased instead.
        """
        with self._lock:
            if entry.retired or entry.runner is None:
                current = self._models.get(entry.name, {}).get(entry.version)
                if current is None or current.retired or current.runner is None or current.state != READY:
                    raise Unavailable(f"model '{entry.name}' version {entry.version} was just replaced or unloaded; retry")
                entry = current
            entry.users += 1
            runner = entry.runner
        try:
            yield runner
        finally:
            with self._lock:
                entry.users -= 1
                close_now = entry.retired and entry.users == 0
            if close_now:
                self._close_runner(entry)

    def has(self, name: str) -> bool:
        """Whether ``name`` is a model this daemon knows (cheap: no disk access)."""
        with self._lock:
            return name in self._models

    def entries(self) -> list[ModelVersion]:
        """Every version on disk with its state (versions not loaded are UNAVAILABLE, 'not loaded')."""
        with self._lock:
            loaded = {(e.name, e.version): e for versions in self._models.values() for e in versions.values()}
        rows = []
        for name in self.repository.names():
            for number in self.repository.versions(name):
                entry = loaded.get((name, number))
                if entry is None:
                    entry = ModelVersion(name, number, {}, UNAVAILABLE, "not loaded (an older version; request it by version to load it)")
                rows.append(entry)
        return rows

    def ready(self) -> bool:
        return self.startup_complete.is_set()

    def _find(self, name: str, number: int) -> ModelVersion | None:
        with self._lock:
            return self._models.get(name, {}).get(number)

    def not_found_message(self, name: str) -> str:
        available = self.repository.names()
        return f"model '{name}' not found; available: {', '.join(available) if available else 'none (upload one with kvctl upload)'}"

    def _close(self, entry: ModelVersion) -> None:
        """Retire a version; its runner closes now, or when the last request leasing it is done."""
        with self._lock:
            entry.retired = True
            if entry.users:
                return
        self._close_runner(entry)

    @staticmethod
    def _close_runner(entry: ModelVersion) -> None:
        if entry.runner is not None:
            try:
                entry.runner.close()
            except Exception:  # noqa: BLE001
                log.exception("closing %s:%d failed", entry.name, entry.version)
            entry.runner = None

