"""kill -9 kvd mid-upload, mid-conversion and mid-delete, restart it each time: every model that was ready is
ready again and answers the same; the interrupted version is absent, never half there; staging is clean; the
orphaned converter child exits by itself."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from opsutil import converter_children, copy_model, staging_entries, wait_for

from kvserve.proto import kvserve_service_pb2 as kv


def _slow_upload(client, name: str, data: bytes, chunk: int = 8 * 1024, pause: float = 0.05):
    def requests():
        yield kv.UploadRequest(header=kv.UploadHeader(name=name, filename="digits.h5", size=len(data)))
        for offset in range(0, len(data), chunk):
            time.sleep(pause)
            yield kv.UploadRequest(chunk=data[offset : offset + chunk])

    return client.kvserve.Upload(requests(), timeout=120)


def _in_background(call) -> threading.Thread:
    """Consume a call's responses in a thread; the kill ends it with an error, which is expected."""

    def consume() -> None:
        try:
            for _event in call:
                pass
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


def test_kill_9_at_any_moment_leaves_the_repository_consistent(kvd_factory, served_digits, digits, tmp_path):
    repository = tmp_path / "repo"
    copy_model(served_digits.repository, "digits", repository)
    copy_model(served_digits.repository, "digits32", repository, as_name="other")
    x = digits.x_test[:16]
    kvd = kvd_factory(repository, "--no-warm-converter")  # the converter children seen are the uploads'
    with kvd.client() as client:
        answers = {name: client.infer(name, x)["probabilities"] for name in ("digits", "other")}

    def check_after_restart(expected_versions: dict[str, list[str]], **start) -> object:
        restarted = kvd_factory(repository, "--no-warm-converter", **start)
        assert not staging_entries(repository)
        with restarted.client() as client:
            listed = {}
            for row in client.list_models():
                listed.setdefault(row["name"], []).append(row["version"])
            assert listed == expected_versions
            for name, expected in answers.items():
                assert client.model_ready(name)
                np.testing.assert_array_equal(client.infer(name, x)["probabilities"], expected)
        for name, versions in expected_versions.items():  # on disk: only complete versions
            assert sorted(p.name for p in (repository / name).iterdir()) == versions
        return restarted

    # 1. mid-upload: a new version of 'digits' is streaming in
    with kvd.client() as client:
        thread = _in_background(_slow_upload(client, "digits", digits.paths["h5"].read_bytes()))
        wait_for(lambda: any(p.stat().st_size for p in (repository / ".staging").rglob("source.*")), 20, "bytes in staging")
        kvd.kill()
        thread.join(10)
    kvd = check_after_restart({"digits": ["1"], "other": ["1"]}, env={"KVSERVE_TEST_FAULT": "slow-convert=60"})

    # 2. mid-conversion: the converter child is running (and is left an orphan by the kill)
    with kvd.client() as client:
        upload = _slow_upload(client, "fresh", digits.paths["h5"].read_bytes(), chunk=1 << 20, pause=0)
        thread = _in_background(upload)
        children = wait_for(lambda: converter_children(repository), 20, "the converter child")
        kvd.kill()
        thread.join(10)
    wait_for(lambda: not converter_children(repository), 10, f"the orphaned converter {children} to exit")
    copy_model(served_digits.repository, "digits32", repository, as_name="other", as_version=2)  # a version to delete next
    kvd = check_after_restart({"digits": ["1"], "other": ["1", "2"]}, env={"KVSERVE_TEST_FAULT": "pause-delete=60"})

    # 3. mid-delete: version 2 of 'other' is renamed away but its files are not removed yet
    with kvd.client() as client:
        deleting = threading.Thread(target=lambda: _ignore_errors(lambda: client.delete("other", "2")), daemon=True)
        deleting.start()
        wait_for(lambda: [p for p in (repository / ".staging").iterdir() if p.name.startswith("deleted-other-2")], 20, "the delete's rename")
        kvd.kill()
        deleting.join(10)
    check_after_restart({"digits": ["1"], "other": ["1"]})


def _ignore_errors(call) -> None:
    try:
        call()
    except grpc.RpcError:
        pass
