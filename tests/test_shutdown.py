"""Graceful shutdown and abandoned uploads: a client that leaves mid-conversion, then SIGTERM with a slow
inference and an upload in flight: health NOT_SERVING, new calls UNAVAILABLE, the inference completes, the
upload is abandoned (converter child killed, staging removed), exit 0."""

from __future__ import annotations

import signal
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import start_kvd
from opsutil import converter_children, copy_model, sample, scrape, staging_entries, wait_for

from kvserve.proto import kvserve_service_pb2 as kv


@pytest.fixture(scope="module")
def kvd(tmp_path_factory, served_digits):
    repository = tmp_path_factory.mktemp("shutdown") / "repo"
    copy_model(served_digits.repository, "digits", repository)
    kvd = start_kvd(repository, "--no-warm-converter", "--access-log", "--grace-seconds", "20", env={"KVSERVE_TEST_FAULT": "slow-infer=3,slow-convert=60"})
    yield kvd
    kvd.kill()


def _start_upload(client, digits, name: str):
    """An upload stream that has reached the converter child (which then sleeps, by the test fault)."""
    data = digits.paths["h5"].read_bytes()

    def requests():
        yield kv.UploadRequest(header=kv.UploadHeader(name=name, filename="digits.h5", size=len(data)))
        yield kv.UploadRequest(chunk=data)

    call = client.kvserve.Upload(requests(), timeout=120)
    for event in call:
        if event.stage == kv.UploadEvent.CONVERTING:
            return call
    raise AssertionError("the upload never reached the converter")


def test_a_client_that_leaves_mid_conversion_leaves_nothing_behind(kvd, digits):
    with kvd.client() as client:
        call = _start_upload(client, digits, "left")
        wait_for(lambda: converter_children(kvd.repository), 10, "the converter child")
        call.cancel()
        wait_for(lambda: not converter_children(kvd.repository), 10, "the converter child to be killed")
        wait_for(lambda: not staging_entries(kvd.repository), 10, "the staging to be removed")
        assert client.model_ready("digits") and not (kvd.repository / "left").exists()
    assert "the client went away" in kvd.log() or "CANCELLED" in kvd.log()


def test_sigterm_drains(kvd, digits):
    results: dict[str, object] = {}

    def slow_infer() -> None:
        with kvd.client() as client:
            results["infer"] = client.infer("digits", {"image": digits.x_test[:2]}, request_id="in-flight")

    def upload() -> None:
        with kvd.client() as client:
            call = _start_upload(client, digits, "abandoned")
            results["upload_started"] = True
            try:
                list(call)
            except grpc.RpcError as error:
                results["upload"] = (error.code(), error.details())

    uploader = threading.Thread(target=upload)
    uploader.start()
    wait_for(lambda: results.get("upload_started") and converter_children(kvd.repository), 15, "the upload's converter")
    inferrer = threading.Thread(target=slow_infer)
    inferrer.start()
    # the inference is running (it takes 3 s by the test fault) before the signal goes
    wait_for(lambda: sample(scrape(kvd.metrics_url), "kvserve_inflight_requests", method="ModelInfer", model="digits") >= 1,
             10, "the inference to be in flight")
    kvd.process.send_signal(signal.SIGTERM)

    with grpc.insecure_channel(kvd.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.NOT_SERVING,
                 3, "health NOT_SERVING")
    with kvd.client(timeout=5) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.infer("digits", {"image": digits.x_test[:1]})
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()

    inferrer.join(20)
    uploader.join(20)
    assert kvd.process.wait(30) == 0
    outputs = results["infer"]["probabilities"]
    assert outputs.shape == (2, 10) and np.allclose(outputs.sum(axis=1), 1, atol=1e-2)
    assert results["upload"][0] == grpc.StatusCode.UNAVAILABLE and "shutting down" in results["upload"][1]
    assert not staging_entries(kvd.repository) and not converter_children(kvd.repository)
    assert not (kvd.repository / "abandoned").exists()
    log = kvd.log()
    assert "shutting down" in log and "stopped" in log and "id=in-flight" in log
