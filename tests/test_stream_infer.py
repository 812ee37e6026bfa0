"""ModelStreamInfer (Triton's streaming inference) through a real in-process kvd: answers in the order sent, each
caller's own rows, a failing request answered on the stream without ending it, requests on one stream run
concurrently (they share a batch), and the stream's deadline holds."""

from __future__ import annotations

import threading
from typing import Iterator

import grpc
import numpy as np
import pytest
from test_async_core import DoublingRunner, EnteredRunner, _client, _install

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto.tensors import build_infer_request, decode_response_outputs


def _request(model: str, x: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    return build_infer_request(model, {"x": x}, request_id=request_id)


def _stream(kvd, requests: Iterator[pb.ModelInferRequest], timeout: float = 30) -> list[pb.ModelStreamInferResponse]:
    with _client(kvd, timeout=timeout) as client:
        return list(client.inference.ModelStreamInfer(requests, timeout=timeout))


def test_answers_come_in_order_each_with_its_own_rows(daemon):
    kvd = daemon()
    _install(kvd, "pair", DoublingRunner())
    xs = [np.full((i % 3 + 1, 2), i, np.float32) for i in range(20)]
    answers = _stream(kvd, iter([_request("pair", x, f"r{i}") for i, x in enumerate(xs)]))
    assert [a.infer_response.id for a in answers] == [f"r{i}" for i in range(20)]
    for x, answer in zip(xs, answers):
        assert answer.error_message == ""
        assert answer.infer_response.model_name == "pair" and answer.infer_response.model_version == "1"
        np.testing.assert_array_equal(decode_response_outputs(answer.infer_response)["y"], 2 * x)


def test_a_failing_request_is_answered_on_the_stream_which_goes_on(daemon):
    kvd = daemon()
    _install(kvd, "pair", DoublingRunner())
    ok = np.ones((1, 2), np.float32)
    requests = [
        _request("pair", ok, "first"),
        _request("pair", np.full((1, 2), np.nan, np.float32), "nan"),  # the runner's own error
        _request("pair", np.ones((1, 3), np.float32), "shape"),  # refused before any compute
        _request("nobody", ok, "unknown"),
        _request("pair", 3 * ok, "last"),
    ]
    answers = _stream(kvd, iter(requests))
    assert [a.infer_response.id for a in answers] == ["first", "nan", "shape", "unknown", "last"]
    assert answers[0].error_message == "" and answers[-1].error_message == ""
    np.testing.assert_array_equal(decode_response_outputs(answers[-1].infer_response)["y"], 6 * ok)
    assert answers[1].error_message.startswith("INVALID_ARGUMENT: ") and "NaN" in answers[1].error_message
    assert answers[2].error_message.startswith("INVALID_ARGUMENT: ") and "expects [-1, 2]" in answers[2].error_message
    assert answers[3].error_message.startswith("NOT_FOUND: ") and "nobody" in answers[3].error_message
    assert "\n" not in "".join(a.error_message for a in answers)


def test_undecodable_bytes_on_the_stream_are_answered_as_invalid_argument(daemon):
    kvd = daemon()
    _install(kvd, "pair", DoublingRunner())
    good = _request("pair", np.ones((1, 2), np.float32), "good").SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{kvd.port}") as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=lambda b: b, response_deserializer=pb.ModelStreamInferResponse.FromString)
        answers = list(stream(iter([b"\xff\xff\xff", good]), timeout=30))
    assert answers[0].error_message.startswith("INVALID_ARGUMENT: ") and "ModelInferRequest" in answers[0].error_message
    assert answers[1].error_message == "" and answers[1].infer_response.id == "good"


def test_requests_on_one_stream_run_together(daemon):
    """With batching on, the requests of a single stream join one batch: the stream does not wait for each answer
    before reading the next request."""
    kvd = daemon()
    runner = EnteredRunner(delay_s=0.2)
    _install(kvd, "pair", runner, {"dynamic_batching": {"max_batch_size": 8, "max_queue_delay_ms": 50}})
    answers = _stream(kvd, iter([_request("pair", np.full((1, 2), i, np.float32), str(i)) for i in range(6)]))
    assert [a.error_message for a in answers] == [""] * 6
    assert max(runner.batches) > 1, f"every request ran alone: {runner.batches}"
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(decode_response_outputs(answer.infer_response)["y"], np.full((1, 2), 2 * i))


def test_the_streams_deadline_ends_it(daemon):
    kvd = daemon()
    runner = EnteredRunner(delay_s=2.0)
    _install(kvd, "pair", runner)
    release = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield _request("pair", np.ones((1, 2), np.float32), "slow")
        release.wait(10)  # keep the stream open past its deadline

    with pytest.raises(grpc.RpcError) as caught:
        _stream(kvd, requests(), timeout=0.5)
    release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with _client(kvd, timeout=30) as client:  # the model is still served afterwards
        assert client.infer("pair", {"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[2.0, 2.0]]
