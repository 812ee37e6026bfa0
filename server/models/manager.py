"""The model manager: which versions are loaded, on which backend, and why; name/version -> runner.

Which versions are loaded is each model's version policy (config file; default: the latest one), re-applied
(``sync``) after every upload, delete, config change and repository poll. A client naming no version gets the
pinned version (``kvctl pin``, else the config file's ``pinned``), else the highest ready version the policy
loaded. A version outside the policy named explicitly is loaded on demand and kept in a small LRU (evicted
beyond ``on_demand_versions``). A version that could not be loaded stays listed with its reason, and so does
anything in the repository that is skipped, so readiness and RepositoryIndex tell the truth.

A request holds a lease on the version it runs (``lease``): a version replaced by a reload or a new upload
keeps answering the requests already on it and its runner is closed when the last of them is done.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from kvserve.plugins import safe
from kvserve.proto.echo import error_line
from kvserve.plugins.manager import Plugins
from kvserve.plugins.types import LoadRequest, Runner, TensorSpec
from kvserve.server.errors import FailedPrecondition, NotFound, Unavailable
from kvserve.server.models.config import Batching, ModelSettings, ServerConfig
from kvserve.server.models.repository import Damaged, Repository, is_name, parse_version
from kvserve.server.models.warmup import warm_up
from kvserve.server.models.worker import WorkerRunner
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
    def __init__(self, repository: Repository, plugins: Plugins, settings: Settings, config: ServerConfig | None = None) -> None:
        self.repository = repository
        self.settings = settings
        self.config = config or ServerConfig()
        self.backends = {b.name: b for b in plugins.backends()}
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._on_demand: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._pins: dict[str, int | None] = {}
        self._lock = threading.RLock()
        # Rebuilds a damaged IR from the kept source (set by the upload pipeline): (name, version) -> True if rebuilt.
        self.rebuild: Callable[[str, int], bool] | None = None
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
    def open_runner(self, model_dir: Path, manifest: Mapping[str, Any], devices: list[str] | None = None,
                    cache_dir: Path | None = None, warmup: int | None = None) -> tuple[Runner, str, str]:
        """Load on the first backend in the preference list that is available and can serve the model, then
        warm it up (``warmup`` inferences, default the model's configured count) before anyone sees it.

        Returns (runner, backend name, reason). Raises FailedPrecondition listing why each device was skipped.
        """
        name = str(manifest.get("name", ""))
        wanted, own = self.settings_for(name), self.config.models.get(name, ModelSettings())
        preference = devices or list(own.devices or manifest.get("devices") or self.config.defaults.devices
                                     or self.settings.default_devices)
        cache_dir = cache_dir or self.repository.cache_dir
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
            request = LoadRequest(model_dir, manifest, inputs, outputs, cache_dir, config=self.runtime_config(manifest),
                                  allow_unsafe_deserialization=self.settings.allow_unsafe_deserialization)
            refused = safe.refusal(backend, request)
            if refused:
                skipped.append(f"{device} refused it: {refused}")
                continue
            try:
                runner = self._load_on(backend, request)
            except Exception as error:  # noqa: BLE001 - try the next device, keep the reason
                log.warning("loading %s on %s failed: %s", model_dir, device, error)
                skipped.append(f"{device} failed to load it: {error_line(error)}")
                continue
            count = wanted.warmup if warmup is None else warmup
            try:
                done = warm_up(runner, model_dir, inputs, count or 0)
            except Exception as error:  # noqa: BLE001 - a model that cannot answer is not ready on this device
                runner.close()
                log.warning("warming up %s on %s failed: %s", model_dir, device, error)
                skipped.append(f"{device} failed its warm-up inference: {error_line(error)}")
                continue
            execution = getattr(runner, "execution_precision", "")
            served = f"served by {device}" + (f" ({execution} execution)" if execution else "")
            warmed = [f"warmed up with {done} inferences"] if done else []
            return runner, device, "; ".join(skipped + [served] + warmed)
        raise FailedPrecondition("no device could serve the model: " + "; ".join(skipped) + f" (preference: {','.join(preference)})")

    def _load_on(self, backend: Any, request: LoadRequest) -> Runner:
        """The backend's runner: in this process, or in a worker child when the backend runs untrusted model
        code (``isolated``: TF), so that code never runs inside kvd."""
        if getattr(backend, "isolated", False):
            return WorkerRunner(backend.name, request, self.settings.child_memory_bytes, label=str(self.repository.root))
        return backend.load(request)

    def runtime_config(self, manifest: Mapping[str, Any]) -> dict[str, str]:
        """Device properties for one model: its own performance hint, else kvd's --performance-hint, else none
        (each backend keeps its own default: THROUGHPUT for the built-in OpenVINO devices)."""
        own = self.config.models.get(str(manifest.get("name", "")), ModelSettings())
        hint = (own.performance_hint or manifest.get("performance_hint") or self.config.defaults.performance_hint
                or self.settings.performance_hint)
        return {"PERFORMANCE_HINT": hint} if hint else {}

    # --- settings, policy, default version ---------------------------------------------------------
    def settings_for(self, name: str) -> ModelSettings:
        """A model's effective settings: its config-file entry, else the file's defaults, else kvd's built-ins."""
        return self.config.for_model(name)

    def batching(self, name: str) -> Batching | None:
        """Dynamic batching configured for ``name`` (None: no batching), for the batcher and ModelConfig."""
        return self.settings_for(name).batching

    def pinned(self, name: str) -> int | None:
        """The version a client gets when it names none: ``kvctl pin`` (persisted in the repository), else the
        config file's ``pinned``, else None (the policy's highest ready version)."""
        with self._lock:
            if name not in self._pins:  # cached: this runs on every request that names no version
                runtime = self.repository.state(name).get("pinned") if is_name(name) else None
                self._pins[name] = runtime if isinstance(runtime, int) and not isinstance(runtime, bool) else None
            runtime = self._pins[name]
        return runtime if runtime is not None else self.settings_for(name).pinned

    def forget_pins(self) -> None:
        """Re-read pins from the repository on next use (another kvd sharing it may have changed them)."""
        with self._lock:
            self._pins.clear()

    def wanted(self, name: str, stored: list[int] | None = None) -> set[int]:
        """The versions that should be loaded: those the policy selects, plus the pinned one."""
        stored = self.repository.versions(name) if stored is None else stored
        wanted = set(self.settings_for(name).version_policy.select(stored))  # type: ignore[union-attr]
        pin = self.pinned(name)
        if pin in stored:
            wanted.add(pin)
        return wanted

    def default_version(self, name: str) -> ModelVersion:
        """What a request naming no version runs on; Unavailable with the reason when nothing is ready."""
        pin = self.pinned(name)
        with self._lock:
            table = dict(self._models.get(name, {}))
        if pin is not None:
            entry = table.get(pin)
            if entry is not None and entry.state == READY:
                return entry
            if pin in self.repository.versions(name):
                reason = entry.reason if entry is not None else "not loaded yet"
                raise Unavailable(f"model '{name}' is pinned to version {pin}, which is not ready: {reason}; "
                                  f"'kvctl unpin {name}' serves the latest again")
        with self._lock:  # the table holds what the policy wants (sync) plus on-demand loads: skip those
            ready = [v for number, v in table.items() if v.state == READY and (name, number) not in self._on_demand]
        if ready:
            return max(ready, key=lambda v: v.version)
        known = sorted(table.values(), key=lambda v: v.version)
        reason = known[-1].reason if known else "not loaded"
        raise Unavailable(f"model '{name}' is not ready: {reason}")

    def resolve_label(self, name: str, label: str) -> int:
        """A version label (TF Serving's version_label) as a number: ``stable``/``default`` = the version serving
        requests that name none (pin or policy), ``latest`` = the highest ready one, digits = that version."""
        if label.isascii() and label.isdigit():
            return int(label)
        if not self.has(name) and not (is_name(name) and self.repository.versions(name)):
            raise NotFound(self.not_found_message(name))
        if label in ("stable", "default"):
            return self.default_version(name).version
        if label == "latest":
            with self._lock:
                ready = [n for n, e in self._models.get(name, {}).items() if e.state == READY]
            if ready:
                return max(ready)
            return self.default_version(name).version  # Unavailable with the reason
        raise NotFound(f"model '{name}' has no version label '{label}'; labels: stable, latest, or a version number")

    def pin(self, name: str, version: int) -> ModelVersion:
        """Serve ``version`` to clients that name none (persisted); it is loaded first, so a pin never takes a
        model offline: a version that cannot load is refused and the old default keeps serving."""
        if version not in self.repository.versions(name):
            self._require(name)
            raise NotFound(f"model '{name}' has no version {version}; versions: {', '.join(map(str, self.repository.versions(name)))}")
        entry = self.load(name, version)
        self.repository.set_pin(name, version)  # the repository lock is never taken inside the manager's
        with self._lock:
            self._pins[name] = version
            self._on_demand.pop((name, version), None)
        self.sync(name)
        self._notify(name)
        log.info("model %s pinned to version %d", name, version)
        return entry

    def unpin(self, name: str) -> None:
        """Back to the config file's pin, else the policy's latest ready version."""
        self._require(name)
        self.repository.set_pin(name, None)
        with self._lock:
            self._pins[name] = None
        self.sync(name)
        self._notify(name)

    def rollback(self, name: str) -> ModelVersion:
        """Pin the version below the one serving now (the highest older stored version that loads)."""
        current = self.default_version(name).version
        older = [v for v in self.repository.versions(name) if v < current]
        if not older:
            raise FailedPrecondition(f"model '{name}' has no version older than {current} to roll back to")
        errors = []
        for version in reversed(older):
            try:
                return self.pin(name, version)
            except FailedPrecondition as error:
                errors.append(f"version {version}: {error}")
        raise FailedPrecondition(f"cannot roll back model '{name}': " + "; ".join(errors))

    def apply_config(self, config: ServerConfig) -> None:
        """A new configuration (start-up, file change, SIGHUP): policies and pins take effect now; versions whose
        devices, hint or warm-up changed are reloaded beside the running one (in-flight calls keep their lease)."""
        old, self.config = self.config, config
        names = set(self.repository.names()) | set(self._loaded_names())
        for name in sorted(names):
            before, after = old.for_model(name), config.for_model(name)
            if (before.devices, before.performance_hint) != (after.devices, after.performance_hint):
                with self._lock:
                    ready = [n for n, e in self._models.get(name, {}).items() if e.state == READY]
                for number in ready:
                    try:
                        self.load(name, number, reload=True)
                    except Exception as error:  # noqa: BLE001 - the old runner keeps serving
                        log.error("reloading %s version %d for the new config failed: %s", name, number, error)
            self.sync(name)
            self._notify(name)
        self._trim_on_demand()

    def sync(self, name: str) -> None:
        """Load what the policy and pin want, release what they no longer want (on-demand loads excepted)."""
        stored = self.repository.versions(name)
        wanted = self.wanted(name, stored)
        with self._lock:
            table = self._models.get(name, {})
            for number in wanted:  # an on-demand load the policy now wants is promoted: never evicted
                self._on_demand.pop((name, number), None)
            missing = sorted((v for v in wanted if v not in table), reverse=True)  # failed ones keep their reason
            extra = [v for v, e in table.items() if v in stored and v not in wanted and (name, v) not in self._on_demand
                     and e.state == READY]
        for number in missing:
            try:
                self.load(name, number)
            except Exception as error:  # noqa: BLE001 - recorded on the entry
                log.error("model %s version %d could not be loaded: %s", name, number, error)
        if extra:
            self._release(name, extra)

    def is_loaded(self, name: str, number: int) -> bool:
        with self._lock:
            return number in self._models.get(name, {})

    def _loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def _require(self, name: str) -> None:
        if not is_name(name) or not self.repository.versions(name):
            raise NotFound(self.not_found_message(name))

    def _release(self, name: str, numbers: list[int]) -> None:
        with self._lock:
            table = self._models.get(name, {})
            released = [table.pop(n) for n in numbers if n in table]
            for number in numbers:
                self._on_demand.pop((name, number), None)
        for entry in released:
            self._close(entry)
        if released:
            self._notify(name)

    def _trim_on_demand(self) -> None:
        with self._lock:
            evict = []
            while len(self._on_demand) > self.config.on_demand_versions:
                evict.append(self._on_demand.popitem(last=False)[0])
        for name, number in evict:
            log.info("evicting on-demand version %s:%d (more than %d loaded outside the policy)", name, number,
                     self.config.on_demand_versions)
            self._release(name, [number])

    # --- install, load, unload ----------------------------------------------------------------------
    def install(self, entry: ModelVersion, unload_older: bool = True) -> None:
        """Make a loaded version visible; with ``unload_older`` the versions the policy no longer wants are released."""
        self._watch_worker(entry)
        with self._lock:
            versions = self._models.setdefault(entry.name, {})
            old = versions.get(entry.version)
            versions[entry.version] = entry
            released = [old] if old is not None and old is not entry else []
        for other in released:
            self._close(other)
        if unload_older and entry.state == READY:
            self.sync(entry.name)
        self._notify(entry.name)

    def _watch_worker(self, entry: ModelVersion) -> None:
        """A version served by a worker child follows its worker: not ready (with the reason) while it restarts
        or after it kept dying, ready again once restarted. Restarts load from the version's published folder."""
        runner = entry.runner
        if not isinstance(runner, WorkerRunner) or entry.state != READY:
            return
        runner.relocate(self.repository.version_dir(entry.name, entry.version),
                        self.repository.version_cache(entry.name, entry.version))
        base = entry.reason

        def changed(state: str, why: str) -> None:
            with self._lock:
                if entry.retired or self._models.get(entry.name, {}).get(entry.version) is not entry:
                    return
                if state == "ready":
                    entry.state, entry.reason = READY, f"{base}; {why}"
                else:
                    entry.state, entry.reason = (LOADING if state == "restarting" else UNAVAILABLE), why
            self._notify(entry.name)

        runner.watch(changed)

    def load(self, name: str, version: int | None = None, devices: list[str] | None = None, reload: bool = False) -> ModelVersion:
        """Load (or reload) one version from the repository; the default one when ``version`` is None.

        The manifest is checked and every stored file's sha256 verified first: a damaged IR is rebuilt from
        the kept source (``self.rebuild``) or the version is marked damaged with the reason; never served.
        """
        versions = self.repository.versions(name)
        if not versions:
            raise NotFound(self.not_found_message(name))
        if version is None:
            wanted = sorted(self.wanted(name, versions))
            number = self.pinned(name) if self.pinned(name) in versions else (wanted[-1] if wanted else versions[-1])
        else:
            number = version
        lock = self._load_locks.setdefault((name, number), threading.Lock())
        with lock:
            previous = self._find(name, number)
            if previous is not None and previous.state == READY and devices is None and not reload:
                return previous
            try:
                manifest = self._checked_manifest(name, number)
            except Damaged as error:
                entry = ModelVersion(name, number, {}, UNAVAILABLE, str(error))
                self._record_failure(entry, previous)
                raise
            manifest.setdefault("name", name)
            try:
                entry = ModelVersion.from_manifest(name, number, manifest)
            except (KeyError, TypeError, ValueError) as error:
                damaged = Damaged(f"manifest.json is inconsistent (a tensor's name, datatype or shape is malformed: {error!r}); "
                                  "delete the version and upload again")
                self._record_failure(ModelVersion(name, number, {}, UNAVAILABLE, str(damaged)), previous)
                raise damaged from None
            try:
                entry.runner, entry.backend, entry.reason = self.open_runner(
                    self.repository.version_dir(name, number), manifest, devices, self.repository.version_cache(name, number))
                entry.state = READY
            except FailedPrecondition as error:
                entry.state, entry.reason = UNAVAILABLE, str(error)
                self._record_failure(entry, previous)
                raise
            except Exception as error:  # noqa: BLE001 - a stored version kvd cannot make sense of: listed with the cause
                log.exception("loading %s version %d failed", name, number)
                entry.state, entry.reason = UNAVAILABLE, f"loading failed: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
                self._record_failure(entry, previous)
                raise FailedPrecondition(entry.reason) from None
            with self.repository.locked():  # a delete that won the race: never install a ghost
                if number not in self.repository.versions(name):
                    self._close_runner(entry)
                    raise NotFound(f"model '{name}' version {number} was deleted while it loaded")
                self.install(entry, unload_older=False)
            log.info("loaded %s version %d: %s", name, number, entry.reason)
        if version is None:
            self.sync(name)
        return entry

    def _checked_manifest(self, name: str, number: int) -> dict[str, Any]:
        try:
            return self.repository.servable_manifest(name, number)
        except Damaged as error:
            if self.rebuild is None or "manifest.json" in str(error):
                raise
            log.warning("model %s version %d is %s; rebuilding its IR from the kept source", name, number, error)
            try:
                rebuilt = self.rebuild(name, number)
            except Exception as failure:  # noqa: BLE001
                log.error("rebuilding %s version %d failed: %s", name, number, failure)
                rebuilt = False
            if not rebuilt:
                raise Damaged(f"{error}; rebuilding it from the source upload failed, delete it and upload again") from None
            manifest = self.repository.servable_manifest(name, number)
            log.info("model %s version %d rebuilt from its source upload", name, number)
            return manifest

    def _record_failure(self, entry: ModelVersion, previous: ModelVersion | None) -> None:
        if previous is None or previous.state != READY:
            with self.repository.locked():
                if entry.version in self.repository.versions(entry.name):
                    self.install(entry, unload_older=False)

    def load_all(self) -> None:
        """Start-up: load what each model's policy wants; failures and damage are recorded, never fatal."""
        try:
            for problem in self.repository.problems():
                log.error("repository: %s%s %s", problem.name, f"/{problem.version}" if problem.version else "", problem.reason)
            for name in self.repository.names():
                try:
                    self.sync(name)
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

    def forget(self, name: str, versions: list[int], resync: bool = True) -> None:
        """After a delete: drop the versions entirely; the next version the policy wants serves at once
        (``resync``; a caller holding the repository lock passes False and calls ``sync`` after releasing it)."""
        with self._lock:
            table = self._models.get(name, {})
            released = [table.pop(n) for n in versions if n in table]
            for number in versions:
                self._on_demand.pop((name, number), None)
            self._pins.pop(name, None)  # a deleted pinned version unpins (the repository cleared it)
            if not table:
                self._models.pop(name, None)
        for entry in released:
            self._close(entry)
        if resync and self.repository.versions(name):
            self.sync(name)
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
        """The ready version to serve; an explicitly named version outside the policy is loaded on demand
        (bounded: the least recently used of those is evicted beyond ``on_demand_versions``)."""
        number = parse_version(version) if version else None
        with self._lock:
            table = self._models.get(name)
        if not is_name(name) or (not table and not self.repository.versions(name)):
            raise NotFound(self.not_found_message(name))
        if number is None:
            return self.default_version(name)
        entry = (table or {}).get(number)
        if entry is not None and entry.state == READY:
            with self._lock:
                if (name, number) in self._on_demand:
                    self._on_demand.move_to_end((name, number))
            return entry
        stored = self.repository.versions(name)
        if number not in stored:
            raise NotFound(f"model '{name}' has no version {number}; versions: {', '.join(map(str, stored))}")
        if entry is not None and entry.unloaded:
            raise Unavailable(f"model '{name}' version {number} is {entry.reason}")
        if entry is not None and entry.runner is not None and not entry.retired:  # its worker restarts, or gave up
            raise Unavailable(f"model '{name}' version {number} is not ready: {entry.reason}")
        on_demand = number not in self.wanted(name, stored)
        if on_demand and self.config.on_demand_versions == 0:
            raise Unavailable(f"model '{name}' version {number} is outside its version policy "
                              f"({self.settings_for(name).version_policy.describe()}) and on-demand loads are off")  # type: ignore[union-attr]
        try:
            loaded = self.load(name, number)
        except FailedPrecondition as error:
            raise Unavailable(f"model '{name}' version {number} is not ready: {error}") from None
        if on_demand:
            with self._lock:
                self._on_demand[(name, number)] = None
                self._on_demand.move_to_end((name, number))
            self._trim_on_demand()
        return loaded

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
                    entry = ModelVersion(name, number, {}, UNAVAILABLE, "not loaded (outside the version policy; request it by version to load it)")
                rows.append(entry)
        for problem in self.repository.problems():
            number = int(problem.version) if problem.version.isascii() and problem.version.isdigit() else 0
            rows.append(ModelVersion(problem.name, number, {}, UNAVAILABLE, problem.reason))
        return rows

    def ready(self) -> bool:
        return self.startup_complete.is_set()

    def _find(self, name: str, number: int) -> ModelVersion | None:
        with self._lock:
            return self._models.get(name, {}).get(number)

    def describe_config(self) -> dict[str, Any]:
        """The effective configuration (``kvctl config show``): the file's, with each model's pin and policy."""
        data = self.config.to_dict()
        for name in self.repository.names():
            model = data["models"].setdefault(name, self.settings_for(name).to_dict())
            model["pinned"] = self.pinned(name)
            model["serving"] = next((e.version for e in [self._safe_default(name)] if e is not None), None)
            model["stored_versions"] = self.repository.versions(name)
        return data

    def _safe_default(self, name: str) -> ModelVersion | None:
        try:
            return self.default_version(name)
        except Unavailable:
            return None

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

