"""Back-pressure and bounds through one kvd: a per-model queue, dropped work for expired calls, one upload at a
time, the upload size limit, zip bombs and escaping archive members, the conversion time limit, JSON logs."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from conftest import start_kvd
from opsutil import converter_children, copy_model, sample, scrape, staging_entries, wait_for

from kvserve.proto import kvserve_service_pb2 as kv

X = np.zeros((1, 8, 8, 1), np.float32)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def kvd(tmp_path_factory, served_digits):
    repository = tmp_path_factory.mktemp("limits") / "repo"
    copy_model(served_digits.repository, "digits", repository)
    kvd = start_kvd(repository, "--no-warm-converter", "--access-log", "--max-queue", "1", "--max-uploads", "1", "--upload-queue-seconds", "0", "--max-upload-mb", "1",
                    "--conversion-timeout", "1", "--log-format", "json", env={"KVSERVE_TEST_FAULT": "slow-infer=1.5"})
    yield kvd
    kvd.kill()


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def _upload(client, name: str, filename: str, data: bytes, size: int | None = None, pause: float = 0.0, chunk: int = MiB):
    def requests():
        yield kv.UploadRequest(header=kv.UploadHeader(name=name, filename=filename, size=len(data) if size is None else size))
        for offset in range(0, len(data), chunk):
            time.sleep(pause)
            yield kv.UploadRequest(chunk=data[offset : offset + chunk])

    return client.kvserve.Upload(requests(), timeout=120)


def test_per_model_queue_is_bounded(kvd):
    def infer(_index: int) -> str:
        with kvd.client() as client:
            try:
                client.infer("digits", {"image": X})
                return "OK"
            except grpc.RpcError as error:
                return f"{error.code().name}: {error.details()}"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(infer, range(8)))
    refused = [o for o in outcomes if o.startswith("RESOURCE_EXHAUSTED")]
    assert outcomes.count("OK") >= 2 and refused, outcomes
    assert outcomes.count("OK") + len(refused) == 8, outcomes
    assert "already has 1 requests queued (kvd --max-queue 1)" in refused[0]


def test_expired_calls_are_dropped_before_the_model_runs(kvd):
    before = scrape(kvd.metrics_url)
    with kvd.client(timeout=0.5) as client:
        code, _ = _status(lambda: client.infer("digits", {"image": X}))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    dropped = lambda: sample(scrape(kvd.metrics_url), "kvserve_requests_dropped_total", model="digits", reason="deadline")  # noqa: E731
    wait_for(lambda: dropped() == sample(before, "kvserve_requests_dropped_total", model="digits", reason="deadline") + 1, 10, "the drop")
    after = scrape(kvd.metrics_url)
    count = "kvserve_request_inference_seconds_count"
    assert sample(after, count, model="digits") == sample(before, count, model="digits")


def test_one_upload_at_a_time_and_a_cancelled_upload_cleans_up(kvd, digits):
    data = digits.paths["h5"].read_bytes()
    with kvd.client() as client:
        slow = _upload(client, "slow", "digits.h5", data, pause=0.2, chunk=16 * 1024)
        consumer = threading.Thread(target=_drain, args=(slow,), daemon=True)
        consumer.start()
        wait_for(lambda: staging_entries(kvd.repository), 10, "the first upload's staging")
        code, message = _status(lambda: list(_upload(client, "second", "digits.h5", data)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already running 1 upload (--max-uploads)" in message
        slow.cancel()
        consumer.join(10)
        wait_for(lambda: not staging_entries(kvd.repository), 10, "the cancelled upload's staging to go")
        # the staging goes first, the in-progress gauge drops as the upload's call unwinds
        wait_for(lambda: sample(scrape(kvd.metrics_url), "kvserve_uploads_in_progress") == 0, 10, "no upload in progress")
        assert client.model_ready("digits")


def _drain(call) -> None:
    try:
        for _event in call:
            pass
    except grpc.RpcError:
        pass


def test_oversized_uploads_are_refused(kvd):
    with kvd.client() as client:
        code, message = _status(lambda: list(_upload(client, "big", "big.h5", b"\0" * (2 * MiB))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1048576 bytes (--max-upload-mb)" in message
        code, message = _status(lambda: list(_upload(client, "big", "big.h5", b"\0" * (2 * MiB), size=0)))  # size not announced
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload exceeds kvd's limit" in message
    assert not staging_entries(kvd.repository)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_bomb_and_escaping_members_are_refused(kvd, tmp_path):
    bomb = _zip({"m/saved_model.pb": b"x", "m/variables/zeros.bin": b"\0" * (20 * MiB)})
    assert len(bomb) < MiB
    escaping = _zip({"m/saved_model.pb": b"x", "../../escaped.txt": b"gotcha"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, kind in (("m/saved_model.pb", tarfile.REGTYPE), ("m/link", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            archive.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with kvd.client() as client:
        code, message = _status(lambda: list(_upload(client, "bomb", "bomb.zip", bomb)))
        # bounded by a ratio of the upload's own size before the absolute cap (4 MiB here) is reached
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "archive unpacks to" in message and "--archive-ratio" in message
        code, message = _status(lambda: list(_upload(client, "escape", "escape.zip", escaping)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'../../escaped.txt' points outside the archive" in message
        code, message = _status(lambda: list(_upload(client, "link", "link.tar.gz", buffer.getvalue())))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'m/link' is a link or device" in message
    assert not list(kvd.repository.parent.parent.rglob("escaped.txt"))
    assert not staging_entries(kvd.repository)
    assert set(p.name for p in kvd.repository.iterdir()) == {"digits", ".staging", ".cache", ".lock"}  # .lock: the repository lock (issue 13)


def test_conversion_time_limit(kvd, digits):
    with kvd.client() as client:
        code, message = _status(lambda: client.upload(digits.paths["h5"], name="late"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "conversion took longer than 1 s" in message
        assert "--conversion-timeout" in message
        assert client.model_ready("digits")
    assert not staging_entries(kvd.repository) and not converter_children(kvd.repository)
    assert sample(scrape(kvd.metrics_url), "kvserve_conversion_duration_seconds_count", outcome="failed") >= 1


def test_json_log_lines(kvd):
    with kvd.client() as client:
        client.infer("digits", {"image": X}, request_id="json-1")
    events = [json.loads(line) for line in kvd.log().splitlines() if line.startswith("{")]
    call = next(e for e in events if e.get("id") == "json-1")
    assert call["msg"] == "rpc" and call["method"] == "ModelInfer" and call["model"] == "digits" and call["code"] == "OK"
    assert call["version"] == "1" and call["logger"] == "kvserve.server.api.grpc.calls" and call["ms"] > 0
    assert any(e["msg"].startswith("kvd listening on 127.0.0.1") for e in events)
