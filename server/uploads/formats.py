"""Recognise what was uploaded and unpack archives safely (no escaping members, no links, bounded size)."""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kvserve.proto.echo import short
from kvserve.server.ops import disk

from kvserve.server.errors import InvalidArgument

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
KERAS_H5 = "keras-h5"
KERAS_V3 = "keras-v3"
SAVEDMODEL = "savedmodel"
SUPPORTED = "a Keras .h5, a Keras 3 .keras, or a SavedModel directory packed as .zip or .tar.gz"


def _check_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise InvalidArgument(f"archive member {short(name)!r} points outside the archive; repack the model without it")
    return path


def sniff(path: Path, filename: str) -> str:
    """The upload's format, from its content (the filename only breaks no ties)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(HDF5_MAGIC):
        return KERAS_H5
    # By the leading magic, not zipfile.is_zipfile: that finds the end record of a .zip stored *inside* a .tar.
    if head.startswith(ZIP_MAGICS):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except zipfile.BadZipFile as error:
            raise InvalidArgument(f"{filename}: damaged zip archive ({error}); upload {SUPPORTED}") from None
        if "config.json" in names and any(n.endswith(".weights.h5") or n == "metadata.json" for n in names):
            return KERAS_V3
        if any(PurePosixPath(n).name == "saved_model.pb" for n in names):
            return SAVEDMODEL
        raise InvalidArgument(f"{filename}: a zip archive with neither a .keras model nor a saved_model.pb; upload {SUPPORTED}")
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as archive:
                if any(PurePosixPath(m.name).name == "saved_model.pb" for m in archive.getmembers()):
                    return SAVEDMODEL
            raise InvalidArgument(f"{filename}: a tar archive without a saved_model.pb; upload {SUPPORTED}")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise InvalidArgument(f"{filename}: damaged tar archive ({error}); upload {SUPPORTED}") from None
    raise InvalidArgument(f"{filename}: not a model kvserve can read; upload {SUPPORTED}")


MAX_MEMBERS = 10_000
MAX_DEPTH = 32


def unpack_limit(upload_bytes: int, ratio: int, absolute_bytes: int) -> int:
    """How many bytes an archive of ``upload_bytes`` may unpack to: a ratio of its own size, capped absolutely
    (a 200 KB upload may not write 200 MiB however generous --max-upload-mb is)."""
    return max(0, min(upload_bytes * max(ratio, 1), absolute_bytes))


def extract_savedmodel(archive_path: Path, dest: Path, max_bytes: int, max_members: int = MAX_MEMBERS,
                       max_depth: int = MAX_DEPTH) -> Path:
    """Unpack a SavedModel archive into ``dest`` and return the directory holding ``saved_model.pb``.

    Refuses absolute or ``..`` members, links and devices, more than ``max_members`` entries or ``max_depth``
    levels, and more than ``max_bytes`` uncompressed: declared sizes are checked before writing anything and
    the bytes really written are counted while extracting (a lying header stops at the limit). A damaged or
    self-contradicting archive is a client error; a full disk is RESOURCE_EXHAUSTED.
    """
    try:
        return _extract(archive_path, dest, _Budget(max_bytes), max_members, max_depth)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise InvalidArgument(f"the archive is damaged ({error}); pack the SavedModel again") from None
    except OSError as error:  # e.g. a file member and a folder member with the same path
        if disk.is_disk_full(error):
            raise disk.disk_full(dest) from None
        raise InvalidArgument(f"the archive's members conflict ({error.strerror}: {Path(error.filename or '').name}); pack the SavedModel again") from None


class _Budget:
    """Bytes left to write; exceeding it is the client's error, said with the limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.written = 0

    def check_declared(self, count: int, size: int, max_members: int) -> None:
        if count > max_members:
            raise InvalidArgument(f"archive has {count} members, more than the {max_members} allowed")
        if size > self.max_bytes:
            raise InvalidArgument(f"archive unpacks to {size} bytes, more than the {self.max_bytes} allowed for an upload "
                                  "of its size (--archive-ratio, --max-unpacked-mb)")

    def copy(self, src: BinaryIO, target: Path) -> None:
        disk.inject("extract")
        with open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise InvalidArgument(f"archive unpacks to more than the {self.max_bytes} bytes allowed for an upload "
                                          "of its size (--archive-ratio, --max-unpacked-mb)")
                out.write(chunk)


def _checked_path(name: str, max_depth: int) -> PurePosixPath:
    path = _check_member(name)
    if len(path.parts) > max_depth:
        raise InvalidArgument(f"archive member {short(name)!r} is nested {len(path.parts)} levels deep, more than the {max_depth} allowed")
    return path


def _extract(archive_path: Path, dest: Path, budget: _Budget, max_members: int, max_depth: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive_path, "rb") as handle:
        is_zip = handle.read(4).startswith(ZIP_MAGICS)
    if is_zip:
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            budget.check_declared(len(infos), sum(i.file_size for i in infos), max_members)
            for info in infos:
                _checked_path(info.filename, max_depth)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InvalidArgument(f"archive member {short(info.filename)!r} is a symbolic link; links are not accepted")
            for info in infos:
                target = dest / _checked_path(info.filename, max_depth)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src:
                    budget.copy(src, target)
    else:
        with tarfile.open(archive_path) as archive:
            members: list[tarfile.TarInfo] = []
            for member in archive:  # headers only, streamed: a huge member list stops at the limit
                members.append(member)
                budget.check_declared(len(members), 0, max_members)
                _checked_path(member.name, max_depth)
                if not (member.isfile() or member.isdir()):
                    raise InvalidArgument(f"archive member {short(member.name)!r} is a link or device; only files and folders are accepted")
            budget.check_declared(len(members), sum(m.size for m in members if m.isfile()), max_members)
            for member in members:
                target = dest / _checked_path(member.name, max_depth)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = archive.extractfile(member)
                assert src is not None  # a regular file always has contents
                budget.copy(src, target)
    roots = sorted(p.parent for p in dest.rglob("saved_model.pb"))
    if len(roots) != 1:
        raise InvalidArgument(f"the archive must hold exactly one saved_model.pb, it holds {len(roots)}")
    return roots[0]
