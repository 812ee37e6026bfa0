"""Recognise what was uploaded and unpack archives safely (no escaping members, no links, bounded size)."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

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
        raise InvalidArgument(f"archive member {name!r} points outside the archive; repack the model without it")
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


def extract_savedmodel(archive_path: Path, dest: Path, max_bytes: int, max_members: int = 100_000) -> Path:
    """Unpack a SavedModel archive into ``dest`` and return the directory holding ``saved_model.pb``.

    Refuses absolute or ``..`` members, links and devices, more than ``max_members`` entries, and more than
    ``max_bytes`` uncompressed, before writing anything; a damaged or self-contradicting archive is a client
    error too.
    """
    try:
        return _extract(archive_path, dest, max_bytes, max_members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise InvalidArgument(f"the archive is damaged ({error}); pack the SavedModel again") from None
    except OSError as error:  # e.g. a file member and a folder member with the same path
        raise InvalidArgument(f"the archive's members conflict ({error.strerror}: {Path(error.filename or '').name}); pack the SavedModel again") from None


def _extract(archive_path: Path, dest: Path, max_bytes: int, max_members: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive_path, "rb") as handle:
        is_zip = handle.read(4).startswith(ZIP_MAGICS)
    if is_zip:
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            _check_totals(len(infos), sum(i.file_size for i in infos), max_bytes, max_members)
            for info in infos:
                _check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InvalidArgument(f"archive member {info.filename!r} is a symbolic link; links are not accepted")
            for info in infos:
                target = dest / _check_member(info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # zipfile never reads past a member's declared size, and the declared sizes were bounded above
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
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
