"""Repository poll (``kvd --poll-seconds N``): versions another process added, changed or deleted on disk
are picked up, the way Triton's poll mode and OVMS's config poll do; this is what replicas sharing one
repository rely on. Versions appear on disk only complete (rename), so whatever a poll sees is whole; a load
still goes through the manager's checks (digests, the repository lock against a concurrent delete).
"""

from __future__ import annotations

import logging
import os
import threading

from kvserve.server.models.manager import ModelManager
from kvserve.server.models.repository import MANIFEST, STATE

log = logging.getLogger("kvserve.server.models.poll")

Snapshot = dict[str, dict[int, tuple[int, int]]]  # name -> version -> (manifest mtime_ns, size)


def snapshot(manager: ModelManager) -> tuple[Snapshot, dict[str, tuple[int, int]]]:
    """Every stored version's manifest stamp, and every model's state-file stamp (pins)."""
    repository = manager.repository
    versions: Snapshot = {}
    states: dict[str, tuple[int, int]] = {}
    for name in repository.names():
        versions[name] = {}
        for number in repository.versions(name):
            versions[name][number] = _stamp(repository.root / name / str(number) / MANIFEST)
        states[name] = _stamp(repository.root / name / STATE)
    return versions, states


def _stamp(path: os.PathLike[str]) -> tuple[int, int]:
    try:
        info = os.stat(path)
        return info.st_mtime_ns, info.st_size
    except OSError:
        return 0, 0


class RepositoryPoller:
    """Compares the repository with the last look every ``interval_s`` and tells the manager what changed."""

    def __init__(self, manager: ModelManager, interval_s: float) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._seen: Snapshot = {}
        self._states: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._seen, self._states = snapshot(self.manager)
        self._thread = threading.Thread(target=self._run, name="kvd-repository-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a bad look at the disk never stops polling
                log.exception("repository poll failed")

    def poll(self) -> list[str]:
        """One look; returns the models that changed."""
        current, states = snapshot(self.manager)
        changed = []
        for name in sorted(set(current) | set(self._seen)):
            now, before = current.get(name, {}), self._seen.get(name, {})
            deleted = sorted(set(before) - set(now))
            modified = sorted(v for v in set(now) & set(before) if now[v] != before[v])
            added = sorted(set(now) - set(before))
            pins_moved = states.get(name) != self._states.get(name)
            if not (deleted or modified or added or pins_moved):
                continue
            changed.append(name)
            log.info("repository poll: %s: added %s, changed %s, deleted %s%s", name, added or "-", modified or "-",
                     deleted or "-", ", pin changed" if pins_moved else "")
            if pins_moved:
                self.manager.forget_pins()
            if deleted:
                self.manager.forget(name, deleted, resync=False)
            for number in modified:  # replaced beside the running one: in-flight calls keep their lease
                if self.manager.is_loaded(name, number):
                    try:
                        self.manager.load(name, number, reload=True)
                    except Exception as error:  # noqa: BLE001 - recorded on the entry
                        log.error("reloading %s version %d after a change on disk failed: %s", name, number, error)
            self.manager.sync(name)
        self._seen, self._states = current, states
        return changed
