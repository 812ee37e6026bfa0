"""``kvd --model NAME=PATH``: serve a model that was put on disk, not uploaded (KServe's ``/mnt/models``).

PATH is a Keras ``.h5``/``.keras`` file, a SavedModel directory or archive, a folder holding exactly one of
those (what KServe's storage initializer leaves), or a kvd repository that holds NAME. A Keras model goes
through the same upload pipeline as ``kvctl upload`` (converter child, parity, manifest, atomic publish) into
kvd's own repository, which is the IR cache: at the next start the stored version's source digest and
precision match, so nothing is converted again. A kvd version is copied in as it is (no conversion at all).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kvserve.server.models.repository import MANIFEST, Repository, is_version, validate_name
from kvserve.server.uploads.pipeline import SUFFIXES, UploadPipeline, UploadSpec

log = logging.getLogger("kvserve.server.uploads.provision")

CHUNK = 1 << 20
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same SavedModel always zips to the same bytes


@dataclass(frozen=True)
class ModelPath:
    """One ``--model NAME=PATH``."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> "ModelPath":
        """``NAME=PATH``; ValueError with the expected form otherwise."""
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {text!r}: expected NAME=PATH, e.g. --model digits=/mnt/models/digits.h5")
        try:
            validate_name(name)
        except Exception as error:  # noqa: BLE001 - InvalidArgument carries the rule
            raise ValueError(f"--model {text!r}: {error}") from None
        return cls(name, Path(path).expanduser())


def _is_savedmodel(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file()


def _stored_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if is_version(p.name) and int(p.name) > 0 and (p / MANIFEST).is_file())


def locate(name: str, path: Path) -> Path:
    """The one model PATH stands for (a file, a SavedModel dir or a kvd version dir); ValueError says why not."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"--model {name}={path}: no such file or directory")
    if _is_savedmodel(path):
        return path
    versions = _stored_versions(path / name)
    if versions:  # a kvd repository holding NAME
        return path / name / str(versions[-1])
    candidates = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")
                  and ((p.is_file() and p.name.lower().endswith(SUFFIXES)) or (p.is_dir() and _is_savedmodel(p)))]
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "nothing kvd can load"
        raise ValueError(f"--model {name}={path}: the folder must hold exactly one model (.h5, .keras, a SavedModel "
                         f"directory or archive) or a kvd repository with '{name}'; found {found}")
    return candidates[0]


def zip_savedmodel(folder: Path, target: Path) -> None:
    """Pack a SavedModel directory into a zip whose bytes depend only on the files (sorted, fixed times)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                with open(path, "rb") as source, archive.open(info, "w") as member:
                    shutil.copyfileobj(source, member, CHUNK)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(CHUNK), b"")


class Provisioner:
    """Makes each ``--model`` the latest stored version of its name, converting only what changed."""

    def __init__(self, repository: Repository, pipeline: UploadPipeline, precision: str) -> None:
        self.repository = repository
        self.pipeline = pipeline
        self.precision = precision

    def _latest_manifest(self, name: str) -> dict[str, Any] | None:
        versions = self.repository.versions(name)
        return self.repository.read_manifest(name, versions[-1]) if versions else None

    def ensure(self, model: ModelPath) -> str:
        """Convert or copy ``model`` into the repository unless its latest version came from the same bytes.

        Returns what was done, for the log. Raises ValueError (a bad path) or the pipeline's KvError.
        """
        found = locate(model.name, model.path)
        if (found / MANIFEST).is_file():
            return self._copy_version(model.name, found)
        scratch = self.repository.new_staging("provision-")
        try:
            source, filename = found, found.name
            if found.is_dir():
                source, filename = scratch / f"{found.name or 'savedmodel'}.zip", f"{found.name or 'savedmodel'}.zip"
                zip_savedmodel(found, source)
            digest = sha256_of(source)
            latest = self._latest_manifest(model.name)
            requested = latest and latest.get("precision_requested", latest.get("precision"))  # 'auto' picks a rung
            if latest and latest["source"]["sha256"] == digest and requested == self.precision:
                return f"{model.name}: version {latest['version']} already holds {found} ({self.precision}); not converted again"
            spec = UploadSpec(name=model.name, filename=filename, size=source.stat().st_size, sha256=digest, precision=self.precision)
            version = ""
            for event in self.pipeline.run(spec, _chunks(source)):
                log.info("--model %s: %s %s", model.name, event["stage"], event.get("message", ""))
                version = event.get("version", version)
            return f"{model.name}: converted {found} into version {version}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _copy_version(self, name: str, version_dir: Path) -> str:
        """A version of another kvd repository: copy it (IR and all) unless the latest here is the same upload."""
        manifest = json.loads((version_dir / MANIFEST).read_text())
        latest = self._latest_manifest(name)
        if latest and latest["source"]["sha256"] == manifest["source"]["sha256"] and latest.get("ir") == manifest.get("ir"):
            return f"{name}: version {latest['version']} already holds {version_dir}; not copied again"
        staging = self.repository.new_staging("provision-")
        try:
            target = staging / "version"
            shutil.copytree(version_dir, target, symlinks=False)
            (target / MANIFEST).unlink()
            version = self.repository.publish(target, name, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.pipeline.manager.load(name)
        return f"{name}: copied {version_dir} as version {version}"
