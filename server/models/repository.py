"""The model repository on disk: ``<root>/<name>/<version>/`` with a manifest, the upload and the IR.

A version appears only complete: everything is written (and fsynced) in ``.staging/`` and then renamed into
place. Deletes go the other way (rename out, then remove), so a crash never leaves half a version visible.
Every path is built from validated names, so nothing is ever written outside the root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from kvserve.server.ops import disk, faults
from kvserve.proto.echo import short
from kvserve.server.errors import InvalidArgument, NotFound

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MANIFEST = "manifest.json"
STAGING = ".staging"
CACHE = ".cache"


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


MAX_VERSION_DIGITS = 18  # fits int64 (the v2 protocol's version numbers), far below Python's 4300-digit int limit


def parse_version(version: str) -> int:
    if len(version) > MAX_VERSION_DIGITS or not is_version(version) or int(version) < 1:
        raise InvalidArgument(f"invalid version {short(version)!r}: versions are positive integers (1, 2, ...)")
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
    """Write JSON durably: temp file, fsync, rename (a full disk leaves the old file and says so)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with disk.guarded(path.parent), open(tmp, "w") as handle:
            disk.inject("manifest")
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Repository:
    """Names, versions and atomic publication of model versions under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.staging_root = self.root / STAGING
        self.cache_dir = self.root / CACHE
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging_root.mkdir(exist_ok=True)
        self.cache_dir.mkdir(exist_ok=True)

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

    # --- reading --------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        model_dir = self.root / validate_name(name)
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if is_version(p.name) and (p / MANIFEST).is_file())

    def version_dir(self, name: str, version: int) -> Path:
        path = self.root / validate_name(name) / str(int(version))
        if not (path / MANIFEST).is_file():
            raise NotFound(f"model '{name}' has no version {version}; versions: {', '.join(map(str, self.versions(name))) or 'none'}")
        return path

    def read_manifest(self, name: str, version: int) -> dict[str, Any]:
        with open(self.version_dir(name, version) / MANIFEST) as handle:
            return json.load(handle)

    # --- writing --------------------------------------------------------------------------------------
    def new_staging(self, prefix: str = "upload-") -> Path:
        if not NAME_PATTERN.fullmatch(prefix.rstrip("-")):
            raise ValueError(f"staging prefix {prefix!r} must be a plain name")
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging_root))

    def publish(self, staging: Path, name: str, manifest: dict[str, Any]) -> int:
        """Give the staged directory the next version number of ``name`` and move it into place atomically."""
        validate_name(name)
        model_dir = self.root / name
        with self._lock:
            model_dir.mkdir(exist_ok=True)
            existing = [int(p.name) for p in model_dir.iterdir() if is_version(p.name)]
            version = max(existing, default=0) + 1
            manifest["version"] = str(version)
            write_json(staging / MANIFEST, manifest)
            fsync_tree(staging)
            os.rename(staging, model_dir / str(version))
            _fsync_dir(model_dir)
            _fsync_dir(self.root)  # a new model's directory entry, too
        return version

    def update_manifest(self, name: str, version: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Change fields of a stored manifest in place, durably (temp file, fsync, rename)."""
        with self._lock:
            path = self.version_dir(name, version) / MANIFEST
            manifest = json.loads(path.read_text())
            manifest.update(changes)
            write_json(path, manifest)
            _fsync_dir(path.parent)
        return manifest

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version, or every version; returns the versions removed."""
        with self._lock:  # check and rename under one lock: two deletes of one version cannot both pass
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
            model_dir = self.root / name
            if model_dir.is_dir() and not any(model_dir.iterdir()):
                model_dir.rmdir()
        return versions
