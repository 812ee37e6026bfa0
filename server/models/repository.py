"""The model repository on disk: ``<root>/<name>/<version>/`` with a manifest, the upload and the IR.

A version appears only complete: everything is written (and fsynced) in ``.staging/`` and then renamed into
place. Deletes go the other way (rename out, then remove), so a crash never leaves half a version visible.
Every path is built from validated names, so nothing is ever written outside the root.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kvserve.server.ops import faults
from kvserve.server.errors import FailedPrecondition, InvalidArgument, NotFound

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MANIFEST = "manifest.json"
STAGING = ".staging"
CACHE = ".cache"
LOCK = ".lock"
STATE = ".model.json"  # per model: the highest version ever handed out, the pinned version
# Written by the conversion but not needed to serve: the job description (paths in a staging dir that is gone).
NOT_KEPT = ("job.json",)
# Stored files sha256 skips: the manifest holds the digests, the state file changes on pin.
UNHASHED = (MANIFEST,)


class Damaged(FailedPrecondition):
    """A stored version that cannot be served as it is on disk (unreadable, truncated, a file changed or missing)."""


@dataclass(frozen=True)
class Problem:
    """Something in the repository that is skipped, with the real reason (RepositoryIndex, ``kvctl list``)."""

    name: str
    version: str
    reason: str


def is_name(text: str) -> bool:
    """``validate_name`` without the exception: for entries found on disk."""
    return bool(NAME_PATTERN.fullmatch(text)) and ".." not in text


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (relative POSIX path -> hex), the manifest excepted."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink() and rel not in UNHASHED:
            digests[rel] = sha256_file(path)
    return digests


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def validate_name(name: str) -> str:
    """A model name is one path component of safe characters; anything else is refused, never sanitised."""
    if not NAME_PATTERN.fullmatch(name or "") or name in {".", ".."} or ".." in name:
        raise InvalidArgument(
            f"invalid model name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def is_version(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts characters like '²' that int() refuses."""
    return text.isascii() and text.isdigit()


def parse_version(version: str) -> int:
    if not is_version(version) or int(version) < 1:
        raise InvalidArgument(f"invalid version {version!r}: versions are positive integers (1, 2, ...)")
    return int(version)


def fsync_tree(path: Path) -> None:
    """Flush every file and directory under ``path`` so a rename publishes durable content."""
    for dirpath, _dirnames, filenames in os.walk(path):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON durably: temp file, fsync, rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Repository:
    """Names, versions and atomic publication of model versions under one root directory.

    One lock (a thread lock plus an ``flock`` on ``<root>/.lock``, so other kvd processes sharing the
    repository take turns too) covers numbering, publishing and deleting; ``locked()`` lets a caller hold it
    across publish + install or delete + forget, so an upload racing a delete never installs a ghost.
    """

    def __init__(self, root: Path, cache_dir: Path | None = None) -> None:
        """``cache_dir``: OpenVINO's compiled models, per replica when the repository is shared (default <root>/.cache)."""
        self.root = Path(root).resolve()
        self.staging_root = self.root / STAGING
        self.cache_dir = Path(cache_dir).resolve() if cache_dir else self.root / CACHE
        self._lock = threading.RLock()
        self._depth = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging_root.mkdir(exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The repository lock: re-entrant within a process, exclusive between processes."""
        with self._lock:
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --- start-up -------------------------------------------------------------------------------------
    def clean_staging(self) -> list[str]:
        """Remove what interrupted uploads and deletes left behind; returns what was removed."""
        removed = []
        for entry in self.staging_root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)  # files and links (a link's target is never followed)
            removed.append(entry.name)
        return removed

    def clean_cache(self) -> list[str]:
        """Remove compiled-model cache entries no stored version owns (deleted, failed, or an older flat layout)."""
        removed = []
        for entry in list(self.cache_dir.iterdir()):
            keep = entry.is_dir() and not entry.is_symlink() and is_name(entry.name)
            if keep:
                existing = set(map(str, self.versions(entry.name)))
                for version_dir in list(entry.iterdir()):
                    if version_dir.name not in existing:
                        _remove(version_dir)
                        removed.append(f"{entry.name}/{version_dir.name}")
                if not any(entry.iterdir()):
                    entry.rmdir()
                continue
            _remove(entry)
            removed.append(entry.name)
        return removed

    # --- reading --------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Models with at least one stored version; junk in the root is skipped (``problems`` says why)."""
        found = []
        for path in self.root.iterdir():
            try:
                if is_name(path.name) and path.is_dir() and not path.is_symlink() and self.versions(path.name):
                    found.append(path.name)
            except OSError:
                continue
        return sorted(found)

    def versions(self, name: str) -> list[int]:
        """Stored versions of ``name`` (a directory with a manifest); unreadable ones are left to ``problems``."""
        model_dir = self.root / validate_name(name)
        try:
            entries = list(model_dir.iterdir())
        except OSError:
            return []
        numbers = []
        for path in entries:
            try:
                if is_version(path.name) and int(path.name) > 0 and (path / MANIFEST).is_file():
                    numbers.append(int(path.name))
            except OSError:  # an unreadable version directory (chmod 000): not served, reported by problems()
                continue
        return sorted(numbers)

    def problems(self) -> list[Problem]:
        """Everything in the root that is not a servable version, with the reason it is skipped."""
        found: list[Problem] = []
        for path in sorted(self.root.iterdir()):
            name = path.name
            if name in (STAGING, CACHE, LOCK):
                continue
            if not is_name(name):
                found.append(Problem(name, "", "skipped: not a model (names are 1-64 of A-Z a-z 0-9 . _ -, no '..')"))
                continue
            if path.is_symlink() or not path.is_dir():
                found.append(Problem(name, "", "skipped: a stray file, not a model directory"))
                continue
            try:
                entries = sorted(path.iterdir())
            except OSError as error:
                found.append(Problem(name, "", f"skipped: the model directory cannot be read ({_first_line(error)})"))
                continue
            for entry in entries:
                if entry.name == STATE:
                    continue
                if not is_version(entry.name) or int(entry.name) < 1 or entry.is_symlink() or not entry.is_dir():
                    found.append(Problem(name, entry.name, "skipped: not a version (versions are directories named 1, 2, ...)"))
                    continue
                try:
                    if not (entry / MANIFEST).is_file():
                        found.append(Problem(name, entry.name, "skipped: the version has no manifest.json"))
                        continue
                    os.listdir(entry)
                except OSError as error:
                    found.append(Problem(name, entry.name, f"skipped: the version directory cannot be read ({_first_line(error)})"))
        return found

    def version_dir(self, name: str, version: int) -> Path:
        path = self.root / validate_name(name) / str(int(version))
        if not (path / MANIFEST).is_file():
            raise NotFound(f"model '{name}' has no version {version}; versions: {', '.join(map(str, self.versions(name))) or 'none'}")
        return path

    def read_manifest(self, name: str, version: int) -> dict[str, Any]:
        """The stored manifest; Damaged (with the cause) when it is unreadable, truncated or inconsistent."""
        path = self.version_dir(name, version) / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except OSError as error:
            raise Damaged(f"manifest.json cannot be read ({_first_line(error)})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Damaged(f"manifest.json is truncated or not JSON ({_first_line(error)}); delete the version and upload again") from None
        if not isinstance(manifest, dict):
            raise Damaged("manifest.json is not a JSON object; delete the version and upload again")
        return manifest

    def servable_manifest(self, name: str, version: int) -> dict[str, Any]:
        """``read_manifest`` plus the fields serving needs (inputs/outputs) and the file digests checked."""
        manifest = self.read_manifest(name, version)
        for key in ("inputs", "outputs"):
            if not isinstance(manifest.get(key), list) or not all(isinstance(t, dict) and "name" in t for t in manifest[key]):
                raise Damaged(f"manifest.json is inconsistent ('{key}' is missing or malformed); delete the version and upload again")
        self.verify(name, version, manifest)
        return manifest

    def verify(self, name: str, version: int, manifest: dict[str, Any]) -> None:
        """Raise Damaged naming each stored file that is missing or whose sha256 differs from the manifest's."""
        folder = self.version_dir(name, version)
        files = manifest.get("files")
        if not isinstance(files, dict):
            return  # stored before digests were recorded: nothing to compare with
        bad = []
        for rel, expected in sorted(files.items()):
            path = folder / rel
            try:
                if sha256_file(path) != expected:
                    bad.append(f"{rel} changed (sha256 differs)")
            except FileNotFoundError:
                bad.append(f"{rel} is missing")
            except OSError as error:
                bad.append(f"{rel} cannot be read ({_first_line(error)})")
        if bad:
            raise Damaged("damaged: " + "; ".join(bad))

    def state(self, name: str) -> dict[str, Any]:
        """Per-model state that outlives versions: ``last_version`` handed out and the ``pinned`` version."""
        path = self.root / validate_name(name) / STATE
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self, name: str, data: dict[str, Any]) -> None:
        model_dir = self.root / name
        model_dir.mkdir(exist_ok=True)
        write_json(model_dir / STATE, data)
        _fsync_dir(model_dir)

    def set_pin(self, name: str, version: int | None) -> None:
        """Persist the version served when a client names none (None: the policy's latest)."""
        with self.locked():
            if version is not None:
                self.version_dir(name, version)
            self._write_state(name, {**self.state(name), "pinned": version})

    def version_cache(self, name: str, version: int) -> Path:
        """The compiled-model cache of one version, removed with it."""
        return self.cache_dir / validate_name(name) / str(int(version))

    # --- writing --------------------------------------------------------------------------------------
    def new_staging(self, prefix: str = "upload-") -> Path:
        if not NAME_PATTERN.fullmatch(prefix.rstrip("-")):
            raise ValueError(f"staging prefix {prefix!r} must be a plain name")
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging_root))

    def staging_cache(self, staging: Path) -> Path:
        """Compiled-model cache of a staged upload: moved to the version's on publish, removed on failure."""
        return self.cache_dir / STAGING / staging.name

    def publish(self, staging: Path, name: str, manifest: dict[str, Any]) -> int:
        """Give the staged directory the next version number of ``name`` and move it into place atomically.

        The number comes from a persisted counter (``.model.json``), written durably before the rename, so a
        number is never handed out twice, even after the highest version was deleted or kvd was killed.
        """
        validate_name(name)
        model_dir = self.root / name
        for leftover in NOT_KEPT:
            (staging / leftover).unlink(missing_ok=True)
        manifest["files"] = file_digests(staging)
        with self.locked():
            model_dir.mkdir(exist_ok=True)
            existing = [int(p.name) for p in model_dir.iterdir() if is_version(p.name)]
            state = self.state(name)
            last = state.get("last_version") if isinstance(state.get("last_version"), int) else 0
            version = max(max(existing, default=0), last) + 1
            self._write_state(name, {**state, "last_version": version})
            manifest["version"] = str(version)
            write_json(staging / MANIFEST, manifest)
            fsync_tree(staging)
            os.rename(staging, model_dir / str(version))
            _fsync_dir(model_dir)
            _fsync_dir(self.root)  # a new model's directory entry, too
            compiled = self.staging_cache(staging)
            if compiled.is_dir():
                target = self.version_cache(name, version)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.rename(compiled, target)
        return version

    def discard_staging(self, staging: Path) -> None:
        """A failed upload: its files and its compiled-model cache go."""
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(self.staging_cache(staging), ignore_errors=True)

    def update_manifest(self, name: str, version: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Change fields of a stored manifest in place, durably (temp file, fsync, rename)."""
        with self.locked():
            path = self.version_dir(name, version) / MANIFEST
            manifest = json.loads(path.read_text())
            manifest.update(changes)
            write_json(path, manifest)
            _fsync_dir(path.parent)
        return manifest

    def replace_files(self, name: str, version: int, rebuilt: Path, digests: dict[str, str]) -> dict[str, Any]:
        """Swap rebuilt IR files into a stored version (each by rename) and record their digests."""
        with self.locked():
            folder = self.version_dir(name, version)
            for rel in digests:
                os.replace(rebuilt / rel, folder / rel)
            _fsync_dir(folder)
            manifest = json.loads((folder / MANIFEST).read_text())
            manifest["files"] = {**manifest.get("files", {}), **digests}
            write_json(folder / MANIFEST, manifest)
            _fsync_dir(folder)
        shutil.rmtree(self.version_cache(name, version), ignore_errors=True)
        return manifest

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version, or every version; returns the versions removed (with their compiled cache).

        The model directory keeps its ``.model.json`` so a later upload continues the numbering.
        """
        with self.locked():  # check and rename under one lock: two deletes of one version cannot both pass
            versions = [version] if version is not None else self.versions(name)
            if version is not None:
                self.version_dir(name, version)  # NotFound with the list of versions
            elif not versions:
                raise NotFound(f"model '{name}' not found; available: {', '.join(self.names()) or 'none'}")
            for number in versions:
                trash = self.staging_root / f"deleted-{name}-{number}-{os.getpid()}-{threading.get_ident()}"
                os.rename(self.root / name / str(number), trash)
                _fsync_dir(self.root / name)  # the version is gone for good before its files are
                faults.pause("pause-delete", 30.0)  # test-only: a window to kill -9 kvd mid-delete
                shutil.rmtree(trash, ignore_errors=True)
                shutil.rmtree(self.version_cache(name, number), ignore_errors=True)
            state = self.state(name)
            if state.get("pinned") in versions:
                self._write_state(name, {**state, "pinned": None})
        return versions


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
