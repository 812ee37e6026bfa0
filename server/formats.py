"""Recognise what was uploaded and unpack archives safely (no escaping members, no links, bounded size)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from kvserve.server.errors import InvalidArgument

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_H5 = "keras-h5"
KERAS_V3 = "keras-v3"
SAVEDMODEL = "savedmodel"
SUPPORTED = "a Keras .h5, a Keras 3 .keras, or a SavedModel directory packed as .zip or .tar.gz"


def _check_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise InvalidArgument(f"archive member {name!r} points outside the archive; repack the model without it")
    return path


def sniff(path: Path, filename: str) -> str:
    """The upload's format, from its content (the filename only breaks no ties)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(HDF5_MAGIC):
        return KERAS_H5
    if zipfile.is_zipfile(path):
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


def extract_savedmodel(archive_path: Path, dest: Path, max_bytes: int, max_members: int = 100_000) -> Path:
    """Unpack a SavedModel archive into ``dest`` and return the directory holding ``saved_model.pb``.

    Refuses absolute or ``..`` members, links and devices, more than ``max_members`` entries, and more than
    ``max_bytes`` uncompressed, before writing anything.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            _check_totals(len(infos), sum(i.file_size for i in infos), max_bytes, max_members)
            for info in infos:
                _check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InvalidArgument(f"archive member {info.filename!r} is a symbolic link; links are not accepted")
            written = 0
            for info in infos:
                target = dest / _check_member(info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > max_bytes:  # the header lied about sizes: stop at the bound
                            raise InvalidArgument(f"archive unpacks to more than {max_bytes} bytes; refusing it")
                        out.write(block)
    else:
        with tarfile.open(archive_path) as archive:
            members = archive.getmembers()
            _check_totals(len(members), sum(m.size for m in members), max_bytes, max_members)
            for member in members:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise InvalidArgument(f"archive member {member.name!r} is a link or device; only files and folders are accepted")
            archive.extractall(dest, filter="data")
    roots = sorted(p.parent for p in dest.rglob("saved_model.pb"))
    if len(roots) != 1:
        raise InvalidArgument(f"the archive must hold exactly one saved_model.pb, it holds {len(roots)}")
    return roots[0]


def _check_totals(count: int, size: int, max_bytes: int, max_members: int) -> None:
    if count > max_members:
        raise InvalidArgument(f"archive has {count} members, more than the {max_members} allowed")
    if size > max_bytes:
        raise InvalidArgument(f"archive unpacks to {size} bytes, more than the {max_bytes} allowed")
