"""The declarative config file (``kvd --config FILE``, TOML): per-model version policy, pin, devices, hint,
batching and warm-up, plus server-wide defaults. Schema: docs/configuration.md.

Parsing is strict (an unknown key is an error naming it), so a typo never silently does nothing. The watcher
re-reads the file when it changes (poll) or on SIGHUP; a file that does not parse is logged with the reason and
the last good configuration stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from kvserve.server.errors import InvalidArgument
from kvserve.server.models.policy import VersionPolicy, parse_policy
from kvserve.server.models.repository import is_name
from kvserve.server.settings import PERFORMANCE_HINTS

log = logging.getLogger("kvserve.server.models.config")

DEFAULT_WARMUP = 2
DEFAULT_ON_DEMAND = 2
MODEL_KEYS = {"version_policy", "pinned", "devices", "performance_hint", "batching", "warmup"}
SERVER_KEYS = MODEL_KEYS - {"pinned"} | {"on_demand_versions"}


@dataclass(frozen=True)
class Batching:
    """Dynamic batching wanted for a model (the batcher gathers up to ``max_batch`` requests or ``max_delay_ms``)."""

    max_batch: int
    max_delay_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_delay_ms": self.max_delay_ms}


@dataclass(frozen=True)
class ModelSettings:
    """What the config file says about a model; None = not said (the next level decides)."""

    version_policy: VersionPolicy | None = None
    pinned: int | None = None
    devices: tuple[str, ...] | None = None
    performance_hint: str | None = None
    batching: Batching | None = None
    warmup: int | None = None

    def over(self, base: "ModelSettings") -> "ModelSettings":
        """These settings, with what they leave unsaid taken from ``base``."""
        return ModelSettings(*(mine if mine is not None else theirs
                               for mine, theirs in zip(self._values(), base._values())))

    def _values(self) -> tuple[Any, ...]:
        return (self.version_policy, self.pinned, self.devices, self.performance_hint, self.batching, self.warmup)

    def to_dict(self) -> dict[str, Any]:
        return {"version_policy": self.version_policy.describe() if self.version_policy else None, "pinned": self.pinned,
                "devices": list(self.devices) if self.devices else None, "performance_hint": self.performance_hint,
                "batching": self.batching.to_dict() if self.batching else None, "warmup": self.warmup}


BUILT_IN = ModelSettings(version_policy=VersionPolicy("latest", 1), warmup=DEFAULT_WARMUP)


@dataclass(frozen=True)
class ServerConfig:
    defaults: ModelSettings = field(default_factory=ModelSettings)
    models: dict[str, ModelSettings] = field(default_factory=dict)
    on_demand_versions: int = DEFAULT_ON_DEMAND
    source: str = ""  # the file it came from ("" = none: built-in defaults)

    def for_model(self, name: str) -> ModelSettings:
        """The effective settings of one model: its own, else the file's defaults, else kvd's built-ins."""
        return self.models.get(name, ModelSettings()).over(self.defaults.over(BUILT_IN))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source or None, "on_demand_versions": self.on_demand_versions,
                "defaults": self.defaults.over(BUILT_IN).to_dict(),
                "models": {name: self.for_model(name).to_dict() for name in sorted(self.models)}}


def parse_config(text: str, source: str = "") -> ServerConfig:
    """A ServerConfig from TOML text; InvalidArgument naming the key and what is allowed."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{source or 'config'}: not valid TOML ({error})") from None
    unknown = set(data) - {"defaults", "models"}
    if unknown:
        raise InvalidArgument(f"unknown top-level key(s) {', '.join(sorted(unknown))}; use [defaults] and [models.NAME]")
    defaults_data = _table(data.get("defaults", {}), "defaults")
    _check_keys(defaults_data, SERVER_KEYS, "defaults")
    on_demand = defaults_data.pop("on_demand_versions", DEFAULT_ON_DEMAND)
    if not _is_int(on_demand) or on_demand < 0:
        raise InvalidArgument(f"defaults.on_demand_versions must be a count >= 0, not {on_demand!r}")
    models = {}
    for name, table in _table(data.get("models", {}), "models").items():
        if not is_name(name):
            raise InvalidArgument(f"models.{name}: not a valid model name (1-64 of A-Z a-z 0-9 . _ -)")
        table = _table(table, f"models.{name}")
        _check_keys(table, MODEL_KEYS, f"models.{name}")
        models[name] = _model_settings(table, f"models.{name}")
    return ServerConfig(_model_settings(defaults_data, "defaults"), models, on_demand, source)


def load_config(path: Path) -> ServerConfig:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"cannot read the config file {path}: {error}") from None
    return parse_config(text, str(path))


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a table, not {type(value).__name__}")
    return dict(value)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model_settings(table: dict[str, Any], where: str) -> ModelSettings:
    settings = ModelSettings()
    if "version_policy" in table:
        settings = replace(settings, version_policy=parse_policy(table["version_policy"], f"{where}.version_policy"))
    if "pinned" in table:
        pinned = table["pinned"]
        if not _is_int(pinned) or pinned < 1:
            raise InvalidArgument(f"{where}.pinned must be a version number (1, 2, ...), not {pinned!r}")
        settings = replace(settings, pinned=pinned)
    if "devices" in table:
        devices = table["devices"]
        if isinstance(devices, str):
            devices = devices.split(",")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) and d.strip() for d in devices):
            raise InvalidArgument(f"{where}.devices must be a list of device names like [\"CPU\", \"TF\"]")
        settings = replace(settings, devices=tuple(d.strip().upper() for d in devices))
    if "performance_hint" in table:
        hint = str(table["performance_hint"]).upper()
        if hint not in PERFORMANCE_HINTS:
            raise InvalidArgument(f"{where}.performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, not {table['performance_hint']!r}")
        settings = replace(settings, performance_hint=hint)
    if "batching" in table:
        settings = replace(settings, batching=_batching(table["batching"], f"{where}.batching"))
    if "warmup" in table:
        warmup = table["warmup"]
        if not _is_int(warmup) or not 0 <= warmup <= 1000:
            raise InvalidArgument(f"{where}.warmup must be a count of inferences 0-1000 (0 = off), not {warmup!r}")
        settings = replace(settings, warmup=warmup)
    return settings


def _batching(value: Any, where: str) -> Batching:
    table = _table(value, where)
    _check_keys(table, {"max_batch", "max_delay_ms"}, where)
    max_batch, delay = table.get("max_batch", 1), table.get("max_delay_ms", 0)
    if not _is_int(max_batch) or max_batch < 1:
        raise InvalidArgument(f"{where}.max_batch must be an integer >= 1, not {max_batch!r}")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60_000:
        raise InvalidArgument(f"{where}.max_delay_ms must be 0-60000 milliseconds, not {delay!r}")
    return Batching(max_batch, float(delay))


class ConfigWatcher:
    """Re-reads the config file when its content changes (checked every ``poll_s``) or when ``wake`` is called
    (SIGHUP); hands each new good configuration to ``apply``; keeps the last good one when a file is bad."""

    def __init__(self, path: Path, apply: Callable[[ServerConfig], None], poll_s: float = 2.0) -> None:
        self.path = path
        self.apply = apply
        self.poll_s = poll_s
        self.last_error = ""
        self._digest = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_initial(self) -> ServerConfig:
        """The file at start-up: a bad one stops kvd (the operator is there to fix it)."""
        config = load_config(self.path)
        self._digest = self._read_digest()
        return config

    def check(self) -> bool:
        """Reload now if the file changed; True when a new configuration was applied."""
        digest = self._read_digest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self.path)
        except InvalidArgument as error:
            self.last_error = str(error)
            log.error("config %s not applied, keeping the last good one: %s", self.path, error)
            return False
        self.last_error = ""
        log.info("config %s changed: applying it", self.path)
        try:
            self.apply(config)
        except Exception:  # noqa: BLE001 - a failed apply never stops the watcher
            log.exception("applying config %s failed", self.path)
            return False
        return True

    def wake(self) -> None:
        """SIGHUP: re-read even if the content looks unchanged (e.g. to retry a failed load)."""
        self._digest = ""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvd-config-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()

    def _read_digest(self) -> str:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError as error:
            return f"unreadable: {error}"
