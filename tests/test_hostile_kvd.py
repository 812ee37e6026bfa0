"""Issue 14 against a running kvd: image bombs with kvd's RSS checked, undecodable bytes on every RPC, a seeded
generated fuzz of ModelInfer and the other RPCs asserting only documented statuses, disk full on upload, the
free-space floor, child memory limits, and a short hostile+good soak."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from PIL import Image

from conftest import start_kvd
from opsutil import copy_model, staging_entries

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import kvserve_service_pb2 as kv

X = np.zeros((1, 8, 8, 1), np.float32)
MiB = 1024 * 1024
# what a hostile request may get back: never INTERNAL or UNKNOWN (docs/api.md)
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OUT_OF_RANGE}


@pytest.fixture(scope="module")
def kvd(tmp_path_factory, served_digits):
    repository = tmp_path_factory.mktemp("hostile") / "repo"
    copy_model(served_digits.repository, "digits", repository)
    kvd = start_kvd(repository, "--no-warm-converter", "--max-upload-mb", "8", "--max-batch-size", "64",
                    env={"KVSERVE_TEST_FAULT": "enospc-upload"})
    yield kvd
    kvd.kill()


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def status(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def input_name(client) -> str:
    return client.inference.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=10).inputs[0].name


def test_image_bombs_do_not_grow_kvd(kvd):
    """The issue: a 13000x13000 PNG (~160 KiB) cost +0.5 GiB per request, 4 at once +1.8 GiB."""
    bomb = np.array([png(13000, 13000)], dtype=object)
    with kvd.client(timeout=60) as client:
        name = input_name(client)
        client.infer("digits", {name: np.array([png(8, 8)], dtype=object)})  # warm the decode path
        before = rss_mib(kvd.process.pid)
        results: list[tuple[grpc.StatusCode, str]] = []
        threads = [threading.Thread(target=lambda: results.append(status(lambda: client.infer("digits", {name: bomb}))))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tiny = np.array([png(1, 1)] * 15000, dtype=object)  # ~1 MiB of 1x1 PNGs
        results.append(status(lambda: client.infer("digits", {name: tiny})))
        grown = rss_mib(kvd.process.pid) - before
    assert [code for code, _ in results] == [grpc.StatusCode.INVALID_ARGUMENT] * 5, results
    assert all("element 0" in message for _, message in results[:4]), results
    assert "15000 images, more than this server's max batch size 64" in results[4][1]
    assert grown < 150, f"kvd grew {grown:.0f} MiB"  # decoding them would add > 1.5 GiB


UNARY = {
    "/inference.GRPCInferenceService/" + m: m for m in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelConfig",
        "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")}
UNARY.update({"/kvserve.v1.KvServe/" + m: m for m in ("Delete", "Describe", "Configure", "Devices", "Plugins")})
GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11, b"\x12\x05ab"]


@pytest.mark.parametrize("method", sorted(UNARY))
def test_undecodable_request_bytes_are_invalid_argument(kvd, method):
    with grpc.insecure_channel(kvd.address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for garbage in GARBAGE:
            code, message = status(lambda: call(garbage, timeout=10))
            assert code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}, (garbage, code, message)
            assert len(message) < 1200


def test_undecodable_stream_requests_are_invalid_argument(kvd):
    with grpc.insecure_channel(kvd.address) as channel:
        upload = channel.stream_stream("/kvserve.v1.KvServe/Upload", request_serializer=None, response_deserializer=None)
        code, message = status(lambda: list(upload(iter([b"\xff\xff\xff"]), timeout=20)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf message" in message


def test_huge_names_and_versions_are_bounded(kvd):
    with kvd.client(timeout=20) as client:
        name = "n" * 20000 + "\r\u2028forged"
        code, message = status(lambda: client.inference.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=20))
        assert code in DOCUMENTED and len(message) < 1200 and "\r" not in message and "\u2028" not in message
        code, message = status(lambda: client.inference.ModelMetadata(pb.ModelMetadataRequest(name="digits", version="9" * 5000), timeout=20))
        assert code in DOCUMENTED, (code, message)
        code, message = status(lambda: client.kvserve.Describe(kv.DescribeRequest(name="digits", version="9" * 5000), timeout=20))
        assert code in DOCUMENTED, (code, message)
        request = pb.ModelInferRequest(model_name="digits", model_version="9" * 5000)
        code, message = status(lambda: client.inference.ModelInfer(request, timeout=20))
        assert code in DOCUMENTED, (code, message)
    assert "forged" not in "".join(line for line in kvd.log().splitlines() if not line.startswith("20"))  # no forged lines


def _hostile_soak():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "hostile_soak.py"
    spec = importlib.util.spec_from_file_location("kvserve_hostile_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


HOSTILE = _hostile_soak()
hostile_infer = HOSTILE.hostile_infer  # the generator the soak uses too


def test_generated_fuzz_gets_only_documented_statuses(kvd):
    rng = random.Random(14)
    bad: list[tuple[str, str]] = []
    with kvd.client(timeout=30) as client:
        image_input = input_name(client)
        for index in range(300):
            request = hostile_infer(rng, image_input)
            code, message = status(lambda: client.inference.ModelInfer(request, timeout=30))
            if code not in DOCUMENTED | {grpc.StatusCode.OK} or len(message) > 1200:
                bad.append((str(code), message[:200]))
        for index in range(100):  # the other RPCs: random names/versions/bytes in each request field
            name = rng.choice(["digits", "", "n" * rng.randint(1, 20000), "a/b", "..", "\x00", "\u2028"])
            version = rng.choice(["", "1", "9" * rng.randint(1, 5000), "-3", "x"])
            calls = [lambda: client.inference.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=30),
                     lambda: client.inference.ModelConfig(pb.ModelConfigRequest(name=name, version=version), timeout=30),
                     lambda: client.inference.ModelStatistics(pb.ModelStatisticsRequest(name=name, version=version), timeout=30),
                     lambda: client.kvserve.Describe(kv.DescribeRequest(name=name, version=version), timeout=30),
                     lambda: client.kvserve.Configure(kv.ConfigureRequest(name=name, version=version, labels=rng.randbytes(30)), timeout=30)]
            code, message = status(rng.choice(calls))
            if code not in DOCUMENTED | {grpc.StatusCode.OK} or len(message) > 1200:
                bad.append((str(code), message[:200]))
        assert client.infer("digits", X)  # still serving
    assert not bad, bad[:10]


def test_generated_fuzz_on_one_stream_is_answered_request_by_request(kvd):
    """The same hostile requests and undecodable bytes on one ModelStreamInfer stream: one answer each, in order,
    every error a documented status with a bounded one-line message, and the stream (and kvd) carry on."""
    rng = random.Random(15)
    with kvd.client(timeout=60) as client:
        image_input = input_name(client)
        wires = [hostile_infer(rng, image_input).SerializeToString() for _ in range(200)]
        wires[::25] = GARBAGE * 2
        wires.append(pb.ModelInferRequest(model_name="digits", id="last", inputs=[pb.ModelInferRequest.InferInputTensor(
            name=image_input, datatype="FP32", shape=list(X.shape))], raw_input_contents=[X.tobytes()]).SerializeToString())
        with grpc.insecure_channel(kvd.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer", request_serializer=None,
                                           response_deserializer=pb.ModelStreamInferResponse.FromString)
            answers = list(stream(iter(wires), timeout=120))
        assert len(answers) == len(wires)
        documented = {code.name for code in DOCUMENTED}
        bad = [a.error_message[:200] for a in answers if a.error_message and (a.error_message.split(":", 1)[0] not in documented
                                                                              or len(a.error_message) > 1200 or "\n" in a.error_message)]
        assert not bad, bad[:10]
        assert answers[-1].error_message == "" and answers[-1].infer_response.id == "last"
        assert client.infer("digits", X)  # still serving


def test_disk_full_during_upload_is_resource_exhausted_and_leaves_nothing(kvd, digits):
    with kvd.client(timeout=120) as client:
        code, message = status(lambda: client.upload(digits.paths["h5"], name="full"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "repository disk is full (" in message and "free)" in message, message
    assert staging_entries(kvd.repository) == []
    assert not (kvd.repository / "full").exists()


def test_free_space_floor_refuses_uploads_early(kvd_factory, tmp_path, digits):
    kvd = kvd_factory(tmp_path / "floor", "--no-warm-converter", "--min-free-mb", str(1 << 40))
    with kvd.client(timeout=60) as client:
        code, message = status(lambda: client.upload(digits.paths["h5"], name="floor"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "repository disk is full" in message and "--min-free-mb" in message


def test_children_get_a_memory_limit_and_a_raised_oom_score():
    code = ("import os\nfrom kvserve.server.uploads.child import limit_self\nlimit_self()\n"
            "print(open('/proc/self/oom_score_adj').read().strip())\n"
            "try:\n    bytearray(2 << 30)\n    print('allocated')\nexcept MemoryError:\n    print('MemoryError')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "KVSERVE_CHILD_MEMORY_BYTES": str(1 << 30)})
    assert out.stdout.split() == ["500", "MemoryError"], out.stderr


def test_short_hostile_soak(digits, served_digits, tmp_path):
    """12 s of good and hostile traffic together (bench/hostile_soak.py runs it for 60 s)."""
    copy_model(served_digits.repository, "digits", tmp_path / "repo", as_name="steady")
    figures = HOSTILE.run(seconds=12, model=digits.paths["h5"], workdir=tmp_path, steady_ready=True)
    assert not figures["unexpected_errors"], figures
    assert all(figures.get(kind, 0) >= 1 for kind in ("good_infers", "fuzzed", "http_fuzzed", "bombs")), figures
    assert figures["kvd_exit_code"] == 0 and figures["passed"], figures


hostile_http = HOSTILE.hostile_http


def test_generated_http_fuzz_gets_only_client_errors(kvd):
    """The HTTP decoders (KServe v2 JSON and binary extension, TF Serving REST, paths) under seeded generated cases:
    every answer is a client error or success with a short one-line JSON error, never a 500, a traceback or a hang."""
    import json

    rng = random.Random(1414)
    bad: list[tuple[str, int, str]] = []
    with kvd.client(timeout=30) as client:
        image_input = input_name(client)
    seen: set[int] = set()
    known = [  # cases that once answered 500, then the generated ones
        ("GET", "/v1/models/digits/versions/" + "9" * 5000, {}, b""),
        ("POST", "/v1/models/digits/versions/" + "9" * 5000 + ":predict", {}, b'{"instances": [1]}'),
        ("POST", "/v1/models/digits:predict", {}, b'{"instances": ["\\ud800"]}'),
        ("POST", "/v2/models/digits/infer", {}, b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}'),
        ("POST", "/v2/models/digits%0D%0Aforged/versions/1/infer/x", {}, b"{}"),
    ]
    for method, path, headers, body in known + [hostile_http(rng, image_input) for _ in range(400)]:
        code, answer = HOSTILE.http_call(kvd.http_port, method, path, headers, body)
        seen.add(code)
        if code >= 500 and code not in (501, 503):
            bad.append((f"{method} {path[:80]}", code, answer[:200].decode("utf-8", "replace")))
            continue
        if code >= 400:
            try:
                message = json.loads(answer)["error"]
            except (ValueError, KeyError, TypeError):
                bad.append((f"{method} {path[:80]}", code, f"not a JSON error: {answer[:200]!r}"))
                continue
            if len(message) > 1200 or "\n" in message or "Traceback" in message:
                bad.append((f"{method} {path[:80]}", code, message[:200]))
    assert not bad, bad[:10]
    assert {400, 404} <= seen  # the generator reaches the decoders, not only the router
    with kvd.client(timeout=30) as client:
        assert client.infer("digits", X)  # still serving
