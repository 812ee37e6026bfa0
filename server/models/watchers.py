"""The lifecycle's background threads: the config-file watcher and the repository poll (both optional)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kvserve.server.errors import InvalidArgument
from kvserve.server.models.config import ConfigWatcher, ServerConfig
from kvserve.server.models.manager import ModelManager
from kvserve.server.models.poll import RepositoryPoller

log = logging.getLogger("kvserve.server.models.watchers")


def initial_config(path: Path | None) -> ServerConfig:
    """The config file at start-up (built-in defaults without one); ValueError with the reason if it is bad."""
    if path is None:
        return ServerConfig()
    try:
        return ConfigWatcher(path, lambda _config: None).load_initial()
    except InvalidArgument as error:
        raise ValueError(f"--config: {error}") from None


@dataclass
class Watchers:
    config: ConfigWatcher | None = None
    poller: RepositoryPoller | None = None

    @classmethod
    def create(cls, manager: ModelManager, config_path: Path | None, config_poll_s: float, poll_s: float) -> "Watchers":
        config = None
        if config_path is not None:
            config = ConfigWatcher(config_path, manager.apply_config, config_poll_s)
            config.load_initial()  # remember what is in force now: only changes are applied
        return cls(config, RepositoryPoller(manager, poll_s) if poll_s > 0 else None)

    def start(self) -> None:
        if self.config is not None:
            self.config.start()
        if self.poller is not None:
            self.poller.start()

    def reload(self) -> None:
        """SIGHUP: re-read the config file now."""
        if self.config is None:
            log.info("SIGHUP: no --config file to reload")
            return
        self.config.wake()

    def stop(self) -> None:
        for watcher in (self.config, self.poller):
            if watcher is not None:
                watcher.stop()
