"""Model lifecycle end to end (issue 13): version numbers never reused, the previous version serving after a
delete, pin/unpin/rollback, inherit on re-upload, no ghost after an upload racing a delete, integrity of stored
files, start-up that survives damage, the config file with hot reload, two replicas polling one repository,
on-demand LRU, warm-up and disk hygiene. Models are the small digits CNN; extra versions are copies of an
uploaded one (no conversion), so only the tests that are about uploads pay for them."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import Kvd, start_kvd
from opsutil import copy_model, wait_for
from kvserve.proto.tensors import build_infer_request, decode_response_outputs

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """A repository with 'digits' version 1 (uploaded with labels), kvd stopped."""
    base = tmp_path_factory.mktemp("lifecycle")
    labels = base / "labels.txt"
    labels.write_text("\n".join(LABELS))
    kvd = start_kvd(base / "repo")
    try:
        with kvd.client() as client:
            client.upload(digits.paths["h5"], name="digits", labels=labels)
    finally:
        kvd.stop()
    return base / "repo"


def served(client, name: str, x: np.ndarray, version: str = "") -> tuple[str, np.ndarray]:
    """(the version that answered, its first output) for one call."""
    request = build_infer_request(name, _named(client, name, x), version=version)
    response = client.inference.ModelInfer(request, timeout=60)
    return response.model_version, next(iter(decode_response_outputs(response).values()))


def _named(client, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    return {client.metadata(name)["inputs"][0]["name"]: x}


def status_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def index(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m["name"], m["version"]): (m["state"], m["reason"]) for m in client.list_models()}


def kvctl(kvd: Kvd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvserve.client.cli", "--server", kvd.address, *args],
                          capture_output=True, text=True, timeout=120)


def versions_repo(stored: Path, target: Path, count: int, name: str = "m") -> Path:
    for version in range(1, count + 1):
        copy_model(stored, "digits", target, as_name=name, as_version=version)
    return target


# --- versions, delete, pin, rollback, inherit -------------------------------------------------------------


def test_versions_never_lie(digits, kvd_factory, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    kvd = kvd_factory(tmp_path / "repo")
    x = digits.x_test[:4].astype(np.float32)
    with kvd.client() as client:
        assert client.upload(digits.paths["h5"], name="d", labels=labels)["version"] == "1"
        events = []
        manifest = client.upload(digits.paths["h5"], name="d", progress=events.append)  # no flags at all
        assert manifest["version"] == "2" and manifest["labels"] == LABELS
        assert "inherited from version 1" in events[-1].message and "labels (10)" in events[-1].message
        np.save(tmp_path / "x.npy", x[:1])
        shown = kvctl(kvd, "infer", "-m", "d", str(tmp_path / "x.npy"))
        assert shown.returncode == 0, shown.stderr
        assert LABELS[int(digits.keras_probs[0].argmax())] in shown.stdout  # labels survived the re-upload

        assert client.delete("d", "2") == ["2"]
        assert served(client, "d", x)[0] == "1"  # the previous version answers at once, no restart
        assert client.upload(digits.paths["h5"], name="d")["version"] == "3"  # never 2 again
        assert served(client, "d", x)[0] == "3"

        assert client.pin("d", "1")["serving"] == "1"
        assert served(client, "d", x)[0] == "1"
        assert client.unpin("d")["serving"] == "3"
        rolled = kvctl(kvd, "rollback", "d")
        assert rolled.returncode == 0 and "rolled back to version 1" in rolled.stdout, rolled.stderr
        assert served(client, "d", x)[0] == "1"
        assert kvctl(kvd, "unpin", "d").returncode == 0
        assert served(client, "d", x)[0] == "3"
        pinned = kvctl(kvd, "pin", "d", "9")
        assert pinned.returncode != 0 and "no version 9" in pinned.stderr
        assert kvctl(kvd, "pin", "d", "1").returncode == 0
    kvd.stop()
    kvd = kvd_factory(tmp_path / "repo")  # pins and the counter survive a restart
    with kvd.client() as client:
        assert served(client, "d", x)[0] == "1"
        client.delete("d")
        assert client.upload(digits.paths["h5"], name="d")["version"] == "4"
        assert not list((tmp_path / "repo" / ".cache" / "d").glob("[123]"))  # compiled cache of deleted versions gone
        assert not (tmp_path / "repo" / "d" / "4" / "job.json").exists()


def test_upload_racing_delete_leaves_no_ghost(stored, tmp_path):
    """50 rounds of publish+install racing a delete of the same name, in one process with a real runner."""
    from kvserve.plugins.manager import load_plugins
    from kvserve.server.errors import NotFound
    from kvserve.server.models import lifecycle
    from kvserve.server.models.manager import READY, ModelManager
    from kvserve.server.models.repository import MANIFEST, Repository
    from kvserve.server.ops.limits import Abandon
    from kvserve.server.settings import Settings
    from kvserve.server.uploads.pipeline import UploadPipeline

    settings = Settings(repository=tmp_path / "repo", warm_converter=False)
    repository = Repository(settings.repository)
    manager = ModelManager(repository, load_plugins(), settings)
    pipeline = UploadPipeline(repository, manager, settings)
    source = stored / "digits" / "1"
    manifest = json.loads((source / MANIFEST).read_text())
    try:
        for _ in range(50):
            staging = repository.new_staging()
            shutil.copytree(source, staging, dirs_exist_ok=True)
            runner, backend, reason = manager.open_runner(staging, manifest, None, warmup=0)
            barrier = threading.Barrier(2)

            def upload():
                barrier.wait()
                pipeline.publish_and_install(staging, "race", dict(manifest), runner, backend, reason, Abandon())

            def delete():
                barrier.wait()
                try:
                    lifecycle.delete(manager, "race", None)
                except NotFound:
                    pass

            threads = [threading.Thread(target=upload), threading.Thread(target=delete)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            on_disk = set(repository.versions("race"))
            ready = {e.version for e in manager.entries() if e.name == "race" and e.state == READY}
            assert ready <= on_disk, f"ghost versions {ready - on_disk} are served but gone from disk"
            try:
                assert manager.get("race").version in on_disk
            except NotFound:
                assert not on_disk
        staging = repository.new_staging()
        shutil.copytree(source, staging, dirs_exist_ok=True)
        runner, backend, reason = manager.open_runner(staging, manifest, None, warmup=0)
        last = pipeline.publish_and_install(staging, "race", dict(manifest), runner, backend, reason, Abandon())
        assert manager.resolve_label("race", "latest") == manager.resolve_label("race", "stable") == last
        with pytest.raises(NotFound, match="no version label 'canary'"):
            manager.resolve_label("race", "canary")
        with pytest.raises(NotFound, match="model 'nope' not found"):
            manager.resolve_label("nope", "latest")
    finally:
        manager.close()
        pipeline.launcher.close()


# --- integrity and damaged start-up -----------------------------------------------------------------------


def flip(path: Path, at: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, min(at + 64, len(data))):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_rebuilt_or_marked_damaged(stored, digits, kvd_factory, tmp_path):
    repo = tmp_path / "repo"
    copy_model(stored, "digits", repo, as_name="ref")
    flip(copy_model(stored, "digits", repo, as_name="fixable") / "model.bin")
    lost = copy_model(stored, "digits", repo, as_name="lost")
    flip(lost / "model.bin")
    flip(lost / json.loads((lost / "manifest.json").read_text())["source"]["file"], at=10)  # nothing to rebuild from
    kvd = kvd_factory(repo)
    x = digits.x_test[:16].astype(np.float32)
    with kvd.client() as client:
        rows = index(client)
        assert rows[("fixable", "1")][0] == "READY", rows
        assert rows[("lost", "1")][0] == "UNAVAILABLE"
        assert "model.bin changed" in rows[("lost", "1")][1] and "source" in rows[("lost", "1")][1]
        _, expected = served(client, "ref", x)
        _, rebuilt = served(client, "fixable", x)
        np.testing.assert_allclose(rebuilt, expected, atol=1e-3)
        with pytest.raises(grpc.RpcError) as info:
            served(client, "lost", x)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "damaged" in info.value.details()
    assert "rebuilt from its source upload" in kvd.log()


def test_startup_survives_a_damaged_repository(stored, digits, tmp_path):
    repo = tmp_path / "repo"
    copy_model(stored, "digits", repo, as_name="good")
    (repo / "a..b" / "1").mkdir(parents=True)
    (repo / "stray.bin").write_bytes(b"junk")
    truncated = copy_model(stored, "digits", repo, as_name="trunc") / "manifest.json"
    truncated.write_text(truncated.read_text()[:100])
    nobin = copy_model(stored, "digits", repo, as_name="nobin")
    (nobin / "model.bin").unlink()
    (nobin / json.loads((nobin / "manifest.json").read_text())["source"]["file"]).unlink()
    locked = copy_model(stored, "digits", repo, as_name="locked")
    locked.chmod(0)
    # Without CAP_DAC_OVERRIDE (a non-root user, or root with it dropped) chmod 000 really is unreadable.
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search")
    kvd = start_kvd(repo, prefix=prefix)
    try:
        with kvd.client() as client:
            rows = index(client)
            assert rows[("good", "1")][0] == "READY"
            assert served(client, "good", digits.x_test[:2].astype(np.float32))[0] == "1"
            assert "not a model" in rows[("a..b", "")][1]
            assert "stray file" in rows[("stray.bin", "")][1]
            assert "truncated or not JSON" in rows[("trunc", "1")][1]
            assert "model.bin is missing" in rows[("nobin", "1")][1]
            assert "cannot be read" in rows[("locked", "1")][1] and "Permission denied" in rows[("locked", "1")][1]
            listed = kvctl(kvd, "list")
            assert listed.returncode == 0 and "truncated or not JSON" in listed.stdout.replace("\n", " ")
    finally:
        kvd.kill()
        locked.chmod(0o755)


# --- config file ------------------------------------------------------------------------------------------


def test_config_file_applies_changes_and_keeps_the_last_good_one(stored, digits, kvd_factory, tmp_path):
    repo = versions_repo(stored, tmp_path / "repo", 2)
    config = tmp_path / "kvd.toml"
    config.write_text("[models.m]\nversion_policy = 'all'\npinned = 1\nbatching = {max_batch = 8, max_delay_ms = 2}\n")
    kvd = kvd_factory(repo, "--config", str(config), "--config-poll-seconds", "0.3")
    x = digits.x_test[:2].astype(np.float32)
    with kvd.client() as client:
        assert served(client, "m", x)[0] == "1"
        shown = client.config()["models"]["m"]
        assert shown["batching"] == {"max_batch": 8, "max_delay_ms": 2.0} and shown["version_policy"] == "all"
        config.write_text("[models.m]\nversion_policy = 'all'\npinned = 2\nbatching = {max_batch = 4, max_delay_ms = 1}\n")
        wait_for(lambda: served(client, "m", x)[0] == "2", 30, "the new pin to apply")
        assert client.config()["models"]["m"]["batching"]["max_batch"] == 4
        config.write_text("[models.m]\npinned = \n")  # a syntax error
        wait_for(lambda: "keeping the last good one" in kvd.log(), 30, "the bad config to be reported")
        assert served(client, "m", x)[0] == "2" and client.config()["models"]["m"]["pinned"] == 2
    shown = kvctl(kvd, "config", "show")
    assert shown.returncode == 0 and "pinned 2" in shown.stdout and "max_batch 4" in shown.stdout


def test_sighup_reloads_the_config(stored, digits, kvd_factory, tmp_path):
    repo = versions_repo(stored, tmp_path / "repo", 2)
    config = tmp_path / "kvd.toml"
    config.write_text("[models.m]\npinned = 1\n")
    kvd = kvd_factory(repo, "--config", str(config), "--config-poll-seconds", "3600")
    x = digits.x_test[:2].astype(np.float32)
    with kvd.client() as client:
        assert served(client, "m", x)[0] == "1"
        config.write_text("[defaults]\nversion_policy = 'latest 1'\n")  # no pin: the latest serves
        kvd.process.send_signal(signal.SIGHUP)
        wait_for(lambda: served(client, "m", x)[0] == "2", 30, "SIGHUP to apply the config")
        assert index(client)[("m", "1")][0] == "UNAVAILABLE"  # outside 'latest 1' now: released


def test_bad_config_at_start_is_refused(tmp_path):
    config = tmp_path / "kvd.toml"
    config.write_text("[models.m]\nwarmup = -1\n")
    done = subprocess.run([sys.executable, "-m", "kvserve.server.main", "--http-address", "", "--repository", str(tmp_path / "repo"),
                           "--address", "127.0.0.1:0", "--metrics-address", "", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "warmup must be a count" in done.stderr


# --- poll, on-demand, warm-up -----------------------------------------------------------------------------


def test_two_replicas_share_one_repository(stored, digits, kvd_factory, tmp_path):
    repo = tmp_path / "repo"
    copy_model(stored, "digits", repo, as_name="base")
    first = kvd_factory(repo, "--poll-seconds", "1")
    second = kvd_factory(repo, "--poll-seconds", "1", "--no-warm-converter")
    x = digits.x_test[:2].astype(np.float32)
    with first.client() as a, second.client() as b:
        a.upload(digits.paths["h5"], name="fresh")
        wait_for(lambda: ("fresh", "1") in index(b) and index(b)[("fresh", "1")][0] == "READY", 30, "the replica to serve the upload")
        assert served(b, "fresh", x)[0] == "1"
        a.delete("fresh")
        wait_for(lambda: status_of(lambda: served(b, "fresh", x)) == grpc.StatusCode.NOT_FOUND, 30, "the delete to reach the replica")
        assert not any(name == "fresh" for name, _ in index(b))
        b.pin("base", "1")  # a pin made on one replica is seen by the other
        wait_for(lambda: a.config()["models"]["base"]["pinned"] == 1, 30, "the pin to reach the other replica")


def test_on_demand_versions_are_bounded_and_warmed(stored, digits, kvd_factory, tmp_path):
    repo = versions_repo(stored, tmp_path / "repo", 3)
    config = tmp_path / "kvd.toml"
    config.write_text("[defaults]\non_demand_versions = 1\nwarmup = 3\n")
    kvd = kvd_factory(repo, "--config", str(config))
    x = digits.x_test[:2].astype(np.float32)
    with kvd.client() as client:
        rows = index(client)
        assert rows[("m", "3")][0] == "READY" and "warmed up with 3 inferences" in rows[("m", "3")][1]
        assert rows[("m", "1")][0] == "UNAVAILABLE"
        assert served(client, "m", x, "1")[0] == "1"
        assert served(client, "m", x, "2")[0] == "2"  # evicts version 1
        rows = index(client)
        assert (rows[("m", "1")][0], rows[("m", "2")][0], rows[("m", "3")][0]) == ("UNAVAILABLE", "READY", "READY")
        assert served(client, "m", x)[0] == "3"  # on-demand loads never become the default
        client.delete("m", "3")
        assert served(client, "m", x)[0] == "2"
        assert not (repo / ".cache" / "m" / "3").exists()
