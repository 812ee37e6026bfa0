"""Pure unit tests for kvserve.server.uploads.formats: sniffing uploads and unpacking SavedModel archives safely."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import json
from pathlib import Path

import pytest

from kvserve.server.uploads import formats
from kvserve.server.errors import InvalidArgument

MB = 1 << 20


# --- archive builders --------------------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz", extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return path


SAVEDMODEL = {
    "export/saved_model.pb": b"\x08\x01fake-graph",
    "export/fingerprint.pb": b"fp",
    "export/variables/variables.index": b"index",
    "export/variables/variables.data-00000-of-00001": os.urandom(2048),
    "export/assets/labels.txt": b"cat\ndog\n",
}


@pytest.fixture
def area(tmp_path: Path) -> dict[str, Path]:
    """dest for extraction and an empty sibling that must stay empty, under one parent."""
    parent = tmp_path / "work"
    (parent / "sibling").mkdir(parents=True)
    return {"parent": parent, "dest": parent / "dest", "sibling": parent / "sibling", "tmp": tmp_path}


def assert_nothing_escaped(area: dict[str, Path]) -> None:
    assert list(area["sibling"].iterdir()) == []
    assert sorted(p.name for p in area["parent"].iterdir()) in (["dest", "sibling"], ["sibling"])


def assert_names_supported(message: str) -> None:
    assert formats.SUPPORTED in message
    assert ".h5" in message and ".keras" in message and "SavedModel" in message


# --- sniff -------------------------------------------------------------------------------------------------


def test_sniff_hdf5_magic(tmp_path):
    path = tmp_path / "upload.bin"
    path.write_bytes(formats.HDF5_MAGIC + b"\x00" * 100 + b"rest of an hdf5 file")
    assert formats.sniff(path, "model.whatever") == formats.KERAS_H5


def test_sniff_keras_v3_zip(tmp_path):
    path = make_zip(tmp_path / "m.keras", {"metadata.json": b"{}", "config.json": b"{}",
                                          "model.weights.h5": formats.HDF5_MAGIC + b"w"})
    assert formats.sniff(path, "m.keras") == formats.KERAS_V3


def test_sniff_keras_v3_zip_without_metadata(tmp_path):
    path = make_zip(tmp_path / "m.keras", {"config.json": b"{}", "model.weights.h5": b"w"})
    assert formats.sniff(path, "m.keras") == formats.KERAS_V3


def test_sniff_content_wins_over_filename(tmp_path):
    path = make_zip(tmp_path / "model.h5", SAVEDMODEL)
    assert formats.sniff(path, "model.h5") == formats.SAVEDMODEL


def test_sniff_savedmodel_zip(tmp_path):
    assert formats.sniff(make_zip(tmp_path / "sm.zip", SAVEDMODEL), "sm.zip") == formats.SAVEDMODEL


def test_sniff_savedmodel_zip_at_top_level(tmp_path):
    path = make_zip(tmp_path / "sm.zip", {"saved_model.pb": b"pb", "variables/variables.index": b"i"})
    assert formats.sniff(path, "sm.zip") == formats.SAVEDMODEL


@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w", ".tar"), ("w:bz2", ".tar.bz2")])
def test_sniff_savedmodel_tar(tmp_path, mode, suffix):
    path = make_tar(tmp_path / f"sm{suffix}", SAVEDMODEL, mode)
    assert formats.sniff(path, f"sm{suffix}") == formats.SAVEDMODEL


def sniff_refusal(path: Path, filename: str) -> str:
    with pytest.raises(InvalidArgument) as info:
        formats.sniff(path, filename)
    message = str(info.value)
    assert message.startswith(f"{filename}: ")
    assert_names_supported(message)
    return message


def test_sniff_refuses_garbage(tmp_path):
    path = tmp_path / "g"
    path.write_bytes(b"this is not a model at all\n" * 100)
    assert "not a model kvserve can read" in sniff_refusal(path, "garbage.bin")


def test_sniff_refuses_random_bytes(tmp_path):
    path = tmp_path / "r"
    path.write_bytes(os.urandom(10_000))
    sniff_refusal(path, "random.bin")


def test_sniff_refuses_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert "not a model kvserve can read" in sniff_refusal(path, "empty.h5")


def test_sniff_refuses_truncated_hdf5_magic(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(formats.HDF5_MAGIC[:5])
    sniff_refusal(path, "short.h5")


def test_sniff_refuses_zip_without_model(tmp_path):
    path = make_zip(tmp_path / "docs.zip", {"readme.txt": b"hi", "config.json": b"{}"})
    assert "neither a .keras model nor a saved_model.pb" in sniff_refusal(path, "docs.zip")


def test_sniff_refuses_tar_without_saved_model(tmp_path):
    path = make_tar(tmp_path / "x.tar.gz", {"export/variables/variables.index": b"i", "export/saved_model.pbtxt": b"t"})
    assert "tar archive without a saved_model.pb" in sniff_refusal(path, "x.tar.gz")


def test_sniff_refuses_damaged_zip(tmp_path):
    data = bytearray(make_zip(tmp_path / "ok.zip", SAVEDMODEL).read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central: central + 2] = b"XX"  # the central directory no longer starts with its signature
    path = tmp_path / "damaged.zip"
    path.write_bytes(bytes(data))
    assert zipfile.is_zipfile(path)
    assert "damaged zip archive" in sniff_refusal(path, "damaged.zip")


def test_sniff_refuses_truncated_tar_gz(tmp_path):
    data = make_tar(tmp_path / "ok.tar.gz", {"m/saved_model.pb": os.urandom(200_000)}).read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(data[: len(data) // 2])
    sniff_refusal(path, "cut.tar.gz")


def test_sniff_plain_tar_whose_last_member_is_a_zip(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", {"vocab.txt": b"a b c"}).read_bytes()
    path = make_tar(tmp_path / "sm.tar", {"m/saved_model.pb": b"pb", "m/assets/vocab.zip": inner}, "w")
    assert formats.sniff(path, "sm.tar") == formats.SAVEDMODEL


# --- extract_savedmodel: normal archives -------------------------------------------------------------------


def check_extracted(root: Path) -> None:
    assert root.name == "export"
    for rel, data in SAVEDMODEL.items():
        assert (root.parent / rel).read_bytes() == data


def test_extract_zip(tmp_path, area):
    root = formats.extract_savedmodel(make_zip(tmp_path / "sm.zip", SAVEDMODEL), area["dest"], max_bytes=MB)
    assert root == area["dest"] / "export"
    check_extracted(root)
    assert_nothing_escaped(area)


def test_extract_zip_with_directory_entries(tmp_path, area):
    path = tmp_path / "sm.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("export/", b"")
        archive.writestr("export/variables/", b"")
        for name, data in SAVEDMODEL.items():
            archive.writestr(name, data)
    root = formats.extract_savedmodel(path, area["dest"], max_bytes=MB)
    check_extracted(root)


@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_extract_tar(tmp_path, area, mode, suffix):
    dirs = []
    for name in ("export", "export/variables"):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        dirs.append(info)
    root = formats.extract_savedmodel(make_tar(tmp_path / f"sm{suffix}", SAVEDMODEL, mode, dirs), area["dest"], max_bytes=MB)
    assert root == area["dest"] / "export"
    check_extracted(root)
    assert_nothing_escaped(area)


def test_extract_top_level_saved_model(tmp_path, area):
    path = make_tar(tmp_path / "sm.tar.gz", {"saved_model.pb": b"pb", "variables/variables.index": b"i"})
    assert formats.extract_savedmodel(path, area["dest"], max_bytes=MB) == area["dest"]


def test_extract_at_exact_limits(tmp_path, area):
    members = {"m/saved_model.pb": b"p" * 1000, "m/variables/v": b"v" * 24}
    path = make_zip(tmp_path / "sm.zip", members)
    assert formats.extract_savedmodel(path, area["dest"], max_bytes=1024, max_members=2) == area["dest"] / "m"


# --- extract_savedmodel: refusals --------------------------------------------------------------------------


def refuse_extract(area: dict[str, Path], path: Path, match: str, **limits) -> str:
    with pytest.raises(InvalidArgument, match=match) as info:
        formats.extract_savedmodel(path, area["dest"], max_bytes=limits.get("max_bytes", MB),
                                   max_members=limits.get("max_members", 100_000))
    assert_nothing_escaped(area)
    return str(info.value)


ESCAPING = ["../sibling/evil.txt", "export/../../sibling/evil.txt", "..\\sibling\\evil.txt", "export\\..\\..\\x"]


@pytest.mark.parametrize("bad", ESCAPING)
def test_zip_refuses_dotdot_members(tmp_path, area, bad):
    path = make_zip(tmp_path / "evil.zip", {**SAVEDMODEL, bad: b"pwned"})
    refuse_extract(area, path, "points outside the archive")
    assert not area["dest"].exists() or list(area["dest"].iterdir()) == []  # refused before writing anything


def test_zip_refuses_absolute_member(tmp_path, area):
    target = area["sibling"] / "evil.txt"
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in SAVEDMODEL.items():
            archive.writestr(name, data)
        archive.writestr(zipfile.ZipInfo(str(target)), b"pwned")
    refuse_extract(area, path, "points outside the archive")
    assert not target.exists()


@pytest.mark.parametrize("bad", ["../sibling/evil.txt", "export/../../sibling/evil.txt"])
def test_tar_refuses_dotdot_members(tmp_path, area, bad):
    path = make_tar(tmp_path / "evil.tar.gz", {**SAVEDMODEL, bad: b"pwned"})
    refuse_extract(area, path, "points outside the archive")


def test_tar_refuses_absolute_member(tmp_path, area):
    target = area["sibling"] / "evil.txt"
    path = make_tar(tmp_path / "evil.tar.gz", {**SAVEDMODEL, str(target): b"pwned"})
    refuse_extract(area, path, "points outside the archive")
    assert not target.exists()


def test_zip_refuses_symlink_member(tmp_path, area):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in SAVEDMODEL.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("export/assets/link")
        link.external_attr = (0o120777 << 16)
        link.create_system = 3
        archive.writestr(link, str(area["sibling"]))
    refuse_extract(area, path, "symbolic link")
    assert not area["dest"].exists() or list(area["dest"].iterdir()) == []


@pytest.mark.parametrize("link_type, message", [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link")])
@pytest.mark.parametrize("linkname", ["../sibling", "/etc/passwd", "export/saved_model.pb"])
def test_tar_refuses_links(tmp_path, area, link_type, message, linkname):
    link = tarfile.TarInfo("export/assets/link")
    link.type = link_type
    link.linkname = linkname
    path = make_tar(tmp_path / "link.tar.gz", SAVEDMODEL, extra=[link])
    text = refuse_extract(area, path, "is a link or device; only files and folders are accepted")
    assert "export/assets/link" in text
    assert not area["dest"].exists() or list(area["dest"].iterdir()) == []


def test_tar_refuses_device_and_fifo(tmp_path, area):
    for kind in (tarfile.CHRTYPE, tarfile.FIFOTYPE):
        node = tarfile.TarInfo("export/node")
        node.type = kind
        refuse_extract(area, make_tar(tmp_path / f"dev{kind!r}.tar.gz", SAVEDMODEL, extra=[node]), "link or device")


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_zip_bomb_refused_before_writing(tmp_path, area, compression):
    path = make_zip(tmp_path / "bomb.zip", {"m/saved_model.pb": b"pb", "m/variables/zeros": b"\0" * (5 * MB)}, compression)
    assert path.stat().st_size < 100_000  # highly compressible
    text = refuse_extract(area, path, "more than the 1048576 allowed")
    assert str(5 * MB + 2) in text
    assert not area["dest"].exists() or list(area["dest"].rglob("*")) == []


def test_tar_bomb_refused_before_writing(tmp_path, area):
    path = make_tar(tmp_path / "bomb.tar.gz", {"m/saved_model.pb": b"pb", "m/variables/zeros": b"\0" * (5 * MB)})
    assert path.stat().st_size < 100_000
    refuse_extract(area, path, "more than the 1048576 allowed")
    assert not area["dest"].exists() or list(area["dest"].rglob("*")) == []


def _understate_zip_size(data: bytearray, name: str, size: int) -> None:
    """Patch a member's uncompressed size in both the local and the central header (a lying zip bomb)."""
    encoded = name.encode()
    for signature, name_len_at, name_at, size_at in ((b"PK\x03\x04", 26, 30, 22), (b"PK\x01\x02", 28, 46, 24)):
        at = data.find(signature)
        while at != -1:
            length = struct.unpack_from("<H", data, at + name_len_at)[0]
            if data[at + name_at: at + name_at + length] == encoded:
                struct.pack_into("<I", data, at + size_at, size)
            at = data.find(signature, at + 1)


def test_zip_bomb_with_lying_header_writes_at_most_the_bound(tmp_path, area):
    data = bytearray(make_zip(tmp_path / "ok.zip", {"m/saved_model.pb": b"pb", "m/variables/zeros": b"\0" * (5 * MB)})
                     .read_bytes())
    _understate_zip_size(data, "m/variables/zeros", 10)
    path = tmp_path / "liar.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(Exception):
        formats.extract_savedmodel(path, area["dest"], max_bytes=MB)
    assert sum(p.stat().st_size for p in area["dest"].rglob("*") if p.is_file()) <= MB
    assert_nothing_escaped(area)


@pytest.mark.parametrize("damage", ["crc", "lying-size"])
def test_damaged_zip_content_is_invalid_argument(tmp_path, area, damage):
    if damage == "crc":
        data = bytearray(make_zip(tmp_path / "ok.zip", {"m/saved_model.pb": b"hello world pb"}, zipfile.ZIP_STORED)
                         .read_bytes())
        data[data.find(b"hello")] = ord("J")
    else:
        data = bytearray(make_zip(tmp_path / "ok.zip", {"m/saved_model.pb": b"pb", "m/variables/zeros": b"\0" * MB})
                         .read_bytes())
        _understate_zip_size(data, "m/variables/zeros", 10)
    path = tmp_path / "damaged.zip"
    path.write_bytes(bytes(data))
    assert formats.sniff(path, "damaged.zip") == formats.SAVEDMODEL  # passes the sniff ...
    with pytest.raises(InvalidArgument):  # ... so extraction must report the damage as a client error
        formats.extract_savedmodel(path, area["dest"], max_bytes=4 * MB)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_too_many_members(tmp_path, area, kind):
    members = {"m/saved_model.pb": b"pb", **{f"m/assets/{i}.txt": b"x" for i in range(9)}}
    path = make_zip(tmp_path / "many.zip", members) if kind == "zip" else make_tar(tmp_path / "many.tar.gz", members)
    # a tar is counted while its headers stream by, so it stops at the first member over the limit
    refuse_extract(area, path, "archive has (10|6) members, more than the 5 allowed", max_members=5)
    assert not area["dest"].exists() or list(area["dest"].rglob("*")) == []


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_no_saved_model_pb(tmp_path, area, kind):
    members = {"m/variables/variables.index": b"i", "m/saved_model.pbtxt": b"t"}
    path = make_zip(tmp_path / "none.zip", members) if kind == "zip" else make_tar(tmp_path / "none.tar.gz", members)
    refuse_extract(area, path, "exactly one saved_model.pb, it holds 0")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_two_saved_model_pb(tmp_path, area, kind):
    members = {"a/saved_model.pb": b"1", "b/saved_model.pb": b"2"}
    path = make_zip(tmp_path / "two.zip", members) if kind == "zip" else make_tar(tmp_path / "two.tar.gz", members)
    refuse_extract(area, path, "exactly one saved_model.pb, it holds 2")


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("members", [{"m/saved_model.pb": b"p", "m/x": b"1", "m/x/y": b"2"},
                                     {"m/saved_model.pb": b"p", ".": b"1"}], ids=["file-then-dir", "dot"])
def test_conflicting_members_are_invalid_argument(tmp_path, area, kind, members):
    path = make_zip(tmp_path / "c.zip", members) if kind == "zip" else make_tar(tmp_path / "c.tar.gz", members)
    with pytest.raises(InvalidArgument):
        formats.extract_savedmodel(path, area["dest"], max_bytes=MB)


# --- issue 14: limits tied to the upload, counted while writing, disk full ---------------------------------


def test_unpack_limit_is_a_ratio_of_the_upload_capped_absolutely():
    assert formats.unpack_limit(204_000, 20, 16 << 30) == 4_080_000  # a 204 KB upload may not write 200 MiB
    assert formats.unpack_limit(4 << 30, 20, 16 << 30) == 16 << 30


def test_a_small_upload_cannot_unpack_to_200_mib(tmp_path, area):
    path = make_zip(tmp_path / "bomb.zip", {"m/saved_model.pb": b"pb", "m/variables/zeros": b"\0" * (20 * MB)})
    limit = formats.unpack_limit(path.stat().st_size, 20, 16 << 30)
    assert limit < MB
    refuse_extract(area, path, f"more than the {limit} allowed for an upload of its size", max_bytes=limit)


def test_deep_nesting_is_refused(tmp_path, area):
    deep = "/".join(["d"] * 40) + "/x"
    refuse_extract(area, make_zip(tmp_path / "deep.zip", {**SAVEDMODEL, deep: b"x"}), "nested 41 levels deep")
    refuse_extract(area, make_tar(tmp_path / "deep.tar.gz", {**SAVEDMODEL, deep: b"x"}), "nested 41 levels deep")


def test_lying_sizes_stop_at_the_limit_while_writing(tmp_path, area):
    """A member whose real stream is longer than the budget left stops there, counted byte by byte."""
    import io
    budget = formats._Budget(1000)
    with pytest.raises(InvalidArgument, match="more than the 1000 bytes"):
        budget.copy(io.BytesIO(b"\0" * 5000), tmp_path / "out")
    assert (tmp_path / "out").stat().st_size <= 1000


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root); skipped where mounting is not allowed."""
    import subprocess
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_unpacking_onto_a_full_disk_says_so(tmp_path, small_disk):
    from kvserve.server.errors import ResourceExhausted
    path = make_zip(tmp_path / "sm.zip", {"m/saved_model.pb": b"pb", "m/variables/data": os.urandom(6 * MB)})
    with pytest.raises(ResourceExhausted, match=r"repository disk is full \(.* free\)"):
        formats.extract_savedmodel(path, small_disk / "staging", max_bytes=64 * MB)


def test_a_manifest_write_on_a_full_disk_keeps_the_old_one(small_disk):
    from kvserve.server.errors import ResourceExhausted
    from kvserve.server.models.repository import write_json
    target = small_disk / "manifest.json"
    write_json(target, {"old": True})
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # the disk is full now
    finally:
        os.close(fd)
    with pytest.raises(ResourceExhausted, match="repository disk is full"):
        write_json(target, {"new": "x" * 200_000})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in small_disk.iterdir() if p.name.endswith(".tmp")] == []
