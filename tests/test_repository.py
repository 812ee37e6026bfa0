"""Pure unit tests for kvserve.server.models.repository: names, versions, atomic publish, delete, staging, paths."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from kvserve.server.models import repository as repo_module
from kvserve.server.errors import InvalidArgument, NotFound
from kvserve.server.models.repository import MANIFEST, Repository, parse_version, validate_name, write_json

GOOD_NAMES = ["a", "A1._-x", "a" * 64, "Z", "9lives", "model.v2", "a_b-c.d"]
BAD_NAMES = ["../x", "a/b", "..", ".", ".x", "-x", "_x", "", "a" * 65, "a\\b", "modèle", "モデル", "a b", " a", "a ",
             "a\nb", "a\n", "/abs", "a\x00b", "~x"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def repo(root: Path) -> Repository:
    return Repository(root)


def stage(repo: Repository, files: dict[str, bytes] | None = None) -> Path:
    staging = repo.new_staging()
    for rel, data in (files or {"source.h5": b"h5", "model.xml": b"<xml/>", "model.bin": b"\0" * 16}).items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    return staging


def publish(repo: Repository, name: str = "m", **manifest) -> int:
    return repo.publish(stage(repo), name, dict(manifest))


def tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


# --- names and versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_validate_name_accepts(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_validate_name_refuses_with_the_rule(name):
    with pytest.raises(InvalidArgument) as info:
        validate_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert "1-64 characters" in message and "A-Z a-z 0-9 . _ -" in message and "starting with a letter or digit" in message


def test_validate_name_refuses_none():
    with pytest.raises(InvalidArgument):
        validate_name(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, number", [("1", 1), ("2", 2), ("42", 42), ("007", 7)])
def test_parse_version(text, number):
    assert parse_version(text) == number


@pytest.mark.parametrize("text", ["0", "00", "-1", "", "x", "1.0", " 1", "1 ", "+1", "v1", "1e3"])
def test_parse_version_refuses(text):
    with pytest.raises(InvalidArgument, match="versions are positive integers"):
        parse_version(text)


@pytest.mark.parametrize("text", ["²", "٣"])
def test_parse_version_refuses_non_ascii_digits(text):
    with pytest.raises(InvalidArgument):
        parse_version(text)


# --- layout and staging ------------------------------------------------------------------------------------


def test_repository_creates_root_staging_and_cache(root):
    repository = Repository(root)
    assert repository.root == root.resolve()
    assert (root / ".staging").is_dir() and (root / ".cache").is_dir()
    assert repository.names() == []


def test_new_staging_is_inside_staging(repo):
    first, second = repo.new_staging(), repo.new_staging()
    assert first != second
    for path in (first, second):
        assert path.is_dir() and path.parent == repo.staging_root
        assert path.name.startswith("upload-")
    assert repo.new_staging(prefix="convert-").name.startswith("convert-")


def test_clean_staging_removes_leftovers(repo):
    leftover_dir = repo.new_staging()
    (leftover_dir / "sub").mkdir()
    (leftover_dir / "sub" / "file.bin").write_bytes(b"x" * 100)
    (repo.staging_root / "stray.tmp").write_text("x")
    removed = repo.clean_staging()
    assert sorted(removed) == sorted([leftover_dir.name, "stray.tmp"])
    assert list(repo.staging_root.iterdir()) == []
    assert repo.clean_staging() == []


def test_clean_staging_never_follows_a_symlink_out(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    os.symlink(outside, repo.staging_root / "link")
    repo.clean_staging()
    assert (outside / "keep.txt").read_text() == "precious"


def test_clean_staging_removes_a_symlink_it_reports(repo, tmp_path):
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", repo.staging_root / "link")
    assert repo.clean_staging() == ["link"]
    assert not os.path.lexists(repo.staging_root / "link")


# --- publish -----------------------------------------------------------------------------------------------


def test_publish_assigns_1_2_3_and_writes_manifest(repo):
    for expected in (1, 2, 3):
        manifest = {"format": "keras-h5", "inputs": [{"name": "x"}]}
        assert repo.publish(stage(repo), "m", manifest) == expected
        assert manifest["version"] == str(expected)
        on_disk = json.loads((repo.root / "m" / str(expected) / MANIFEST).read_text())
        assert set(on_disk.pop("files")) == {"source.h5", "model.xml", "model.bin"}
        assert on_disk == {"format": "keras-h5", "inputs": [{"name": "x"}], "version": str(expected)}
    assert repo.versions("m") == [1, 2, 3]
    assert repo.names() == ["m"]


def test_publish_moves_the_complete_staging_dir(repo):
    files = {"source.h5": b"h5data", "model.xml": b"<net/>", "model.bin": os.urandom(4096), "assets/labels.txt": b"a\nb"}
    staging = stage(repo, files)
    version = repo.publish(staging, "m", {"a": 1})
    assert not staging.exists()
    version_dir = repo.version_dir("m", version)
    assert tree(version_dir) == set(files) | {"assets", MANIFEST}
    for rel, data in files.items():
        assert (version_dir / rel).read_bytes() == data
    assert not list(version_dir.rglob("*.tmp"))
    assert list(repo.staging_root.iterdir()) == []


def test_version_dir_only_ever_appears_complete(repo):
    """A watcher that lists the model dir during publishes never sees a version without all its files."""
    files = {f"f{i:03d}.bin": b"x" * 64 for i in range(40)}
    expected = set(files) | {MANIFEST}
    stop = threading.Event()
    seen_incomplete: list[str] = []
    checked = [0]

    def watch():
        model_dir = repo.root / "m"
        while not stop.is_set():
            if not model_dir.is_dir():
                time.sleep(0.0005)
                continue
            for entry in list(model_dir.iterdir()):
                if entry.name.startswith(".model.json"):
                    continue  # the version counter, not a version
                try:
                    names = {p.name for p in entry.iterdir()}
                except FileNotFoundError:
                    continue
                checked[0] += 1
                if names != expected:
                    seen_incomplete.append(f"{entry.name}: {len(names)} entries")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            repo.publish(stage(repo, files), "m", {})
    finally:
        stop.set()
        watcher.join()
    assert seen_incomplete == []
    assert repo.versions("m") == [1, 2, 3]


def test_concurrent_publish_gives_distinct_versions(repo):
    stagings = [stage(repo, {"id.txt": str(i).encode()}) for i in range(8)]
    barrier = threading.Barrier(8)
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(i: int):
        try:
            barrier.wait()
            results[i] = repo.publish(stagings[i], "m", {"worker": i})
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results.values()) == list(range(1, 9))
    assert repo.versions("m") == list(range(1, 9))
    for worker_id, version in results.items():
        assert (repo.root / "m" / str(version) / "id.txt").read_text() == str(worker_id)
        manifest = repo.read_manifest("m", version)
        manifest.pop("files")
        assert manifest == {"worker": worker_id, "version": str(version)}


def test_publish_skips_numbers_used_by_incomplete_dirs(repo):
    (repo.root / "m" / "1").mkdir(parents=True)  # no manifest: not a version, but the number is taken
    assert repo.versions("m") == []
    assert publish(repo) == 2


# --- reading -----------------------------------------------------------------------------------------------


def test_versions_ignore_dirs_without_manifest_and_non_numeric(repo):
    publish(repo)
    publish(repo)
    model_dir = repo.root / "m"
    (model_dir / "7").mkdir()                       # numeric, no manifest
    (model_dir / "latest").mkdir()                  # non-numeric, with manifest
    (model_dir / "latest" / MANIFEST).write_text("{}")
    (model_dir / "3.bak").mkdir()
    (model_dir / "3.bak" / MANIFEST).write_text("{}")
    (model_dir / "9").write_text("a file, not a dir")
    assert repo.versions("m") == [1, 2]
    assert repo.versions("unknown") == []


def test_versions_are_sorted_numerically(repo):
    for _ in range(11):
        publish(repo)
    assert repo.versions("m") == list(range(1, 12))


def test_names_lists_only_models_with_versions(repo):
    publish(repo, "beta")
    publish(repo, "alpha")
    (repo.root / "empty").mkdir()
    (repo.root / "half" / "1").mkdir(parents=True)
    (repo.root / "stray.txt").write_text("x")
    (repo.root / "-bad" / "1").mkdir(parents=True)
    (repo.root / "-bad" / "1" / MANIFEST).write_text("{}")
    assert repo.names() == ["alpha", "beta"]


def test_read_manifest(repo):
    version = publish(repo, "m", format="keras-v3", labels=["cat", "dog"])
    manifest = repo.read_manifest("m", version)
    assert manifest.pop("files").keys() == {"source.h5", "model.xml", "model.bin"}
    assert manifest == {"format": "keras-v3", "labels": ["cat", "dog"], "version": "1"}


def test_version_dir(repo):
    publish(repo)
    assert repo.version_dir("m", 1) == repo.root / "m" / "1"


def test_version_dir_not_found_lists_versions(repo):
    publish(repo)
    publish(repo)
    with pytest.raises(NotFound, match=r"model 'm' has no version 5; versions: 1, 2"):
        repo.version_dir("m", 5)
    with pytest.raises(NotFound, match=r"model 'other' has no version 1; versions: none"):
        repo.read_manifest("other", 1)


# --- delete ------------------------------------------------------------------------------------------------


def test_delete_one_version(repo):
    for _ in range(3):
        publish(repo)
    assert repo.delete("m", 2) == [2]
    assert repo.versions("m") == [1, 3]
    assert not (repo.root / "m" / "2").exists()
    assert list(repo.staging_root.iterdir()) == []


def test_delete_last_version_keeps_only_the_counter(repo):
    publish(repo)
    assert repo.delete("m", 1) == [1]
    assert [p.name for p in (repo.root / "m").iterdir()] == [".model.json"]
    assert repo.names() == []
    assert publish(repo) == 2  # never reused


def test_delete_all_versions(repo):
    for _ in range(3):
        publish(repo)
    publish(repo, "keep")
    assert repo.delete("m") == [1, 2, 3]
    assert repo.versions("m") == []
    assert repo.names() == ["keep"]
    assert list(repo.staging_root.iterdir()) == []


def test_delete_unknown_raises_not_found(repo):
    publish(repo, "m")
    with pytest.raises(NotFound, match=r"model 'nope' not found; available: m"):
        repo.delete("nope")
    with pytest.raises(NotFound, match=r"model 'm' has no version 9; versions: 1"):
        repo.delete("m", 9)
    with pytest.raises(NotFound, match=r"has no version 1; versions: none"):
        repo.delete("nope", 1)
    assert repo.versions("m") == [1]


def test_concurrent_delete_of_the_same_version_is_not_found(repo):
    """Many rounds of two threads deleting one version: exactly one wins, the other gets NotFound (never an OSError)."""
    for _ in range(20):
        publish(repo)
        number = repo.versions("m")[-1]
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def delete() -> None:
            barrier.wait()
            try:
                repo.delete("m", number)
                outcomes.append("deleted")
            except NotFound:
                outcomes.append("not found")
            except Exception as error:  # noqa: BLE001 - recorded so the assertion names it
                outcomes.append(repr(error))

        threads = [threading.Thread(target=delete) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(outcomes) == ["deleted", "not found"]


# --- write_json --------------------------------------------------------------------------------------------


def test_write_json_is_atomic_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "manifest.json"
    write_json(path, {"b": 2, "a": [1, 2]})
    write_json(path, {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_write_json_uses_rename(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(repo_module.os, "replace", spy)
    write_json(tmp_path / "x.json", {"a": 1})
    assert calls == [("x.json.tmp", "x.json")]


def test_write_json_failure_keeps_old_content(tmp_path):
    path = tmp_path / "manifest.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}


def test_write_json_failure_leaves_no_tmp(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


# --- paths: nothing outside the root -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_create_nothing_anywhere(tmp_path, name):
    root = tmp_path / "inner" / "repo"
    repository = Repository(root)
    publish(repository, "good")
    staging = stage(repository)
    before_parent, before_grandparent = tree(root.parent), tree(tmp_path)
    operations = [
        lambda: repository.publish(staging, name, {}),
        lambda: repository.versions(name),
        lambda: repository.version_dir(name, 1),
        lambda: repository.read_manifest(name, 1),
        lambda: repository.delete(name),
        lambda: repository.delete(name, 1),
    ]
    for operation in operations:
        with pytest.raises(InvalidArgument):
            operation()
    assert tree(tmp_path) == before_grandparent
    assert tree(root.parent) == before_parent
    assert staging.is_dir()
    assert repository.names() == ["good"]
