"""The Prometheus endpoint after real traffic: counters and histograms with the documented labels; and the
request log: one line per call with the v2 request id, no tensor contents."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from opsutil import sample, scrape, wait_for

from kvserve.proto import kvserve_service_pb2 as kv


def test_metrics_after_traffic(served_digits, digits):
    before = scrape(served_digits.metrics_url)
    with served_digits.client() as client:
        for index in range(5):
            client.infer("digits", digits.x_test[:4], request_id=f"metrics-{index}")
        with pytest.raises(grpc.RpcError):
            client.infer("digits", np.zeros((1, 3, 3, 1), np.float32))  # wrong shape: INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError):
            client.infer("no-such-model", {"image": np.zeros((1, 8, 8, 1), np.float32)})

        def garbage():
            yield kv.UploadRequest(header=kv.UploadHeader(name="garbage", filename="g.h5", size=5))
            yield kv.UploadRequest(chunk=b"12345")

        with pytest.raises(grpc.RpcError):
            list(client.kvserve.Upload(garbage()))
    after = scrape(served_digits.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    infer = {"method": "ModelInfer", "model": "digits"}
    assert delta("kvserve_requests_total", **infer, version="1", code="OK") == 5
    assert delta("kvserve_requests_total", **infer, code="INVALID_ARGUMENT") == 1
    assert delta("kvserve_requests_total", method="ModelInfer", model="", code="NOT_FOUND") == 1  # unknown names: no label
    assert not any(("model", "no-such-model") in labels for _name, labels in after)
    assert delta("kvserve_request_duration_seconds_count", **infer, version="1") == 5  # the failed one: version ""
    assert delta("kvserve_request_duration_seconds_count", **infer) == 6
    for histogram in ("kvserve_request_queue_seconds", "kvserve_request_inference_seconds"):
        assert delta(f"{histogram}_count", model="digits", version="1") == 5
        assert sample(after, f"{histogram}_bucket", model="digits", version="1", le="+Inf") >= 5
    assert sample(after, "kvserve_inflight_requests", method="ModelInfer", model="digits") == 0
    assert sample(after, "kvserve_model_ready", model="digits", version="1", backend="CPU") == 1
    assert sample(after, "kvserve_models_loaded") >= 2
    # the session fixture uploaded digits and digits32; the garbage upload failed where it was received
    assert sample(after, "kvserve_upload_duration_seconds_count", outcome="ok") >= 2
    assert sample(after, "kvserve_conversion_duration_seconds_count", outcome="ok") >= 2
    assert delta("kvserve_upload_failures_total", stage="receiving", code="INVALID_ARGUMENT") == 1
    assert delta("kvserve_requests_total", method="Upload", code="INVALID_ARGUMENT") == 1
    assert sample(after, "kvserve_uploads_in_progress") == 0

    log = served_digits.log()
    line = next(line for line in log.splitlines() if "id=metrics-3" in line)
    assert "kvserve.server.api.grpc.calls: rpc" in line and "method=ModelInfer" in line and "model=digits" in line and "code=OK" in line
    assert sum("id=metrics-" in line for line in log.splitlines()) == 5


def test_no_tensor_contents_in_the_log(served_digits):
    marker = np.full((1, 8, 8, 1), 12345.678, np.float32)
    with served_digits.client() as client:
        client.infer("digits", marker, request_id="no-tensors")
        with pytest.raises(grpc.RpcError):
            client.infer("digits", np.full((1, 8, 8), 12345.678, np.float32), request_id="no-tensors-bad")
    # a refused call's line is written after its status went out (context.abort answers, then the call ends)
    wait_for(lambda: "id=no-tensors-bad" in served_digits.log(), 10, "the refused call's log line")
    log = served_digits.log()
    assert "id=no-tensors " in log
    assert "12345" not in log and marker.tobytes()[:8].hex() not in log
