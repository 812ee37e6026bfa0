"""``kvd --model NAME=PATH`` (KServe's /mnt/models convention), ``--read-only`` replicas and ``--cache-dir``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from kvserve.server.uploads.provision import ModelPath, locate, zip_savedmodel


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _only(outputs: dict[str, np.ndarray]) -> np.ndarray:
    (probs,) = outputs.values()  # a SavedModel names its output after the export signature
    return probs


def _agrees(probs: np.ndarray, reference: np.ndarray) -> None:
    assert probs.shape == reference.shape
    assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.95


def test_model_file_served_read_only_and_not_reconverted_on_restart(kvd_factory, digits, tmp_path):
    mnt = tmp_path / "mnt" / "models"  # what KServe's storage initializer leaves: one model file in a folder
    mnt.mkdir(parents=True)
    shutil.copy(digits.paths["h5"], mnt / "model.h5")
    repository = tmp_path / "kvd-cache"  # nothing prepared beforehand
    cache = tmp_path / "compiled"
    args = ("--model", f"digits={mnt}", "--read-only", "--cache-dir", str(cache))
    kvd = kvd_factory(repository, *args, timeout=300)
    with kvd.client() as client:
        assert client.model_ready("digits")
        _agrees(client.infer("digits", digits.x_test[:32])["probabilities"], digits.keras_probs[:32])
        manifest = client.describe("digits")["manifest"]
        assert manifest["source"]["filename"] == "model.h5"
        error = _rpc_error(lambda: client.upload(digits.paths["h5"], name="other"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "read-only" in error.details()
        error = _rpc_error(lambda: client.delete("digits"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "read-only" in error.details()
        assert [m["version"] for m in client.list_models()] == ["1"]
    assert any(cache.iterdir()), "the compiled-model cache goes to --cache-dir"
    assert not (repository / ".cache").exists()
    assert "converted" in kvd.log()
    kvd.stop()

    kvd = kvd_factory(repository, *args)
    with kvd.client() as client:
        assert [m["version"] for m in client.list_models()] == ["1"]
        _agrees(client.infer("digits", digits.x_test[:32])["probabilities"], digits.keras_probs[:32])
    assert "not converted again" in kvd.log()
    kvd.stop()

    shutil.copy(digits.paths["keras"], mnt / "model.h5")  # the model at PATH changed: converted once more
    (mnt / "model.h5").rename(mnt / "model.keras")
    kvd = kvd_factory(repository, *args, timeout=300)
    with kvd.client() as client:
        assert {(m["version"], m["state"]) for m in client.list_models()} == {("1", "UNAVAILABLE"), ("2", "READY")}
        assert client.describe("digits")["manifest"]["source"]["format"] == "keras-v3"


def test_savedmodel_folder_and_kvd_repository_as_model_path(kvd_factory, digits, tmp_path):
    savedmodel = tmp_path / "mnt" / "sm"
    with zipfile.ZipFile(digits.paths["savedmodel_zip"]) as archive:
        archive.extractall(savedmodel)
    root = next(p.parent for p in savedmodel.rglob("saved_model.pb"))
    first = tmp_path / "first"
    kvd = kvd_factory(first, "--model", f"sm={root}", timeout=300)
    with kvd.client() as client:
        _agrees(_only(client.infer("sm", digits.x_test[:32])), digits.keras_probs[:32])
    kvd.stop()
    kvd = kvd_factory(first, "--model", f"sm={root}")  # the directory zips to the same bytes: no reconversion
    assert "not converted again" in kvd.log()
    kvd.stop()

    second = tmp_path / "second"  # PATH is a kvd repository holding the name: its version is copied, IR and all
    kvd = kvd_factory(second, "--model", f"sm={first}")
    with kvd.client() as client:
        _agrees(_only(client.infer("sm", digits.x_test[:32])), digits.keras_probs[:32])
        assert client.describe("sm")["manifest"]["source"]["format"] == "savedmodel"
    assert "copied" in kvd.log()
    assert not any((second / ".staging").iterdir())


def _kvd_exit(repository: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvserve.server.main", "--http-address", "", "--repository", str(repository), "--address", "127.0.0.1:0",
               "--metrics-address", "", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_model_that_cannot_be_served_stops_kvd_with_one_line(tmp_path, digits):
    done = _kvd_exit(tmp_path / "repo", "--model", f"ghost={tmp_path / 'missing.h5'}")
    assert done.returncode == 2
    assert "--model ghost=" in done.stderr and "no such file or directory" in done.stderr
    assert "Traceback" not in done.stderr

    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(digits.paths["h5"], two / "a.h5")
    shutil.copy(digits.paths["keras"], two / "b.keras")
    done = _kvd_exit(tmp_path / "repo", "--model", f"two={two}")
    assert done.returncode == 2 and "exactly one model" in done.stderr and "a.h5, b.keras" in done.stderr

    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a model")
    done = _kvd_exit(tmp_path / "repo", "--model", f"junk={junk}", "--no-warm-converter")
    assert done.returncode == 2 and "--model junk=" in done.stderr
    assert not any((tmp_path / "repo" / ".staging").iterdir())

    done = _kvd_exit(tmp_path / "repo", "--model", "no-equals-sign")
    assert done.returncode == 2 and "expected NAME=PATH" in done.stderr


def test_read_only_replica_leaves_the_shared_staging_alone(kvd_factory, tmp_path):
    repository = tmp_path / "shared"
    in_flight = repository / ".staging" / "upload-of-the-writer"
    in_flight.mkdir(parents=True)
    kvd = kvd_factory(repository, "--read-only")
    assert in_flight.is_dir()
    kvd.stop()
    kvd_factory(repository)  # the writer cleans what interrupted uploads left
    assert not in_flight.exists()


def test_model_path_parsing_and_location(tmp_path):
    assert ModelPath.parse("a=/x/y.h5") == ModelPath("a", Path("/x/y.h5"))
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        ModelPath.parse("/x/y.h5")
    with pytest.raises(ValueError, match="invalid model name"):
        ModelPath.parse("../a=/x")
    folder = tmp_path / "models"
    (folder / "sm" / "variables").mkdir(parents=True)
    (folder / "sm" / "saved_model.pb").write_bytes(b"pb")
    (folder / "sm" / "variables" / "v.index").write_bytes(b"ix")
    (folder / ".hidden.h5").write_bytes(b"")
    assert locate("m", folder) == folder / "sm"
    assert locate("m", folder / "sm") == folder / "sm"


def test_savedmodel_zip_is_reproducible(tmp_path):
    folder = tmp_path / "sm"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    zip_savedmodel(folder, tmp_path / "a.zip")
    (folder / "saved_model.pb").touch()  # a new mtime, the same bytes
    zip_savedmodel(folder, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == ["saved_model.pb", "variables/variables.index"]
