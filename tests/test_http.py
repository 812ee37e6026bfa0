"""kvd's HTTP door: KServe v2 REST with Triton's binary extension, against a real kvd serving the digits model.

Answers are compared with the gRPC client's on the same server; malformed requests must get a 400 with one
clear line and leave the daemon serving.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import struct
import subprocess

import numpy as np
import pytest
import requests

from kvserve.proto import classes


@pytest.fixture(scope="module")
def http(served_digits) -> str:
    return served_digits.http_url


@pytest.fixture(scope="module")
def grpc_answer(served_digits, digits) -> np.ndarray:
    with served_digits.client() as client:
        return client.infer("digits32", digits.x_test[:4])


def _names(http: str, model: str = "digits32") -> tuple[str, str]:
    metadata = requests.get(f"{http}/v2/models/{model}", timeout=30).json()
    return metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]


def test_health_metadata_and_config(http):
    assert requests.get(f"{http}/v2/health/live", timeout=30).status_code == 200
    assert requests.get(f"{http}/v2/health/ready", timeout=30).status_code == 200
    server = requests.get(f"{http}/v2", timeout=30).json()
    assert server["name"] == "kvserve" and "model_repository" in server["extensions"]
    metadata = requests.get(f"{http}/v2/models/digits32", timeout=30).json()
    assert metadata["name"] == "digits32" and metadata["inputs"][0]["datatype"] == "FP32"
    assert metadata["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert requests.get(f"{http}/v2/models/digits32/versions/1", timeout=30).json()["name"] == "digits32"
    assert requests.get(f"{http}/v2/models/digits32/ready", timeout=30).status_code == 200
    config = requests.get(f"{http}/v2/models/digits32/config", timeout=30).json()
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [8, 8, 1]
    assert config["input"][0]["data_type"] == "TYPE_FP32"


def test_unknown_model_and_route_are_404_json(http):
    response = requests.get(f"{http}/v2/models/nope", timeout=30)
    assert response.status_code == 404 and "not found" in response.json()["error"]
    response = requests.post(f"{http}/v2/models/nope/infer", json={"inputs": []}, timeout=30)
    assert response.status_code in (400, 404) and response.json()["error"]
    response = requests.get(f"{http}/v3/what", timeout=30)
    assert response.status_code == 404 and "no route" in response.json()["error"]


def test_json_infer_nested_and_flat_match_grpc(http, digits, grpc_answer):
    name, output = _names(http)
    x = digits.x_test[:4]
    for data in (x.tolist(), x.reshape(-1).tolist()):
        body = {"id": "r1", "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": data}]}
        response = requests.post(f"{http}/v2/models/digits32/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["id"] == "r1" and answer["model_name"] == "digits32" and answer["model_version"] == "1"
        got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(answer["outputs"][0]["shape"])
        np.testing.assert_allclose(got, grpc_answer[output], rtol=1e-6, atol=1e-7)


def _binary_body(header: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_binary_extension_in_and_out(http, digits, grpc_answer):
    name, output = _names(http)
    x = np.ascontiguousarray(digits.x_test[:4], dtype=np.float32)
    header = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
              "outputs": [{"name": output, "parameters": {"binary_data": True}}]}
    body, headers = _binary_body(header, x.tobytes())
    response = requests.post(f"{http}/v2/models/digits32/infer", data=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    size = answer["outputs"][0]["parameters"]["binary_data_size"]
    got = np.frombuffer(response.content[length:length + size], dtype=np.float32).reshape(answer["outputs"][0]["shape"])
    np.testing.assert_array_equal(got, grpc_answer[output])


def test_classification_top_k_as_on_grpc(http, digits, served_digits):
    name, output = _names(http)
    x = digits.x_test[:3]
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": output, "parameters": {"classification": 2}}]}
    answer = requests.post(f"{http}/v2/models/digits32/infer", json=body, timeout=60).json()
    tensor = answer["outputs"][0]
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [3, 2]
    rows = classes.decode(np.array([s.encode() for s in tensor["data"]], dtype=object).reshape(3, 2))
    with served_digits.client() as client:
        expected = client.classify("digits32", x, k=2)
    assert [[c.index for c in row] for row in rows] == [[c.index for c in row] for row in expected]
    top = requests.post(f"{http}/v2/models/digits32/infer", timeout=60, json={
        "parameters": {"top_k": 1}, "inputs": body["inputs"]}).json()
    assert [int(s.split(":")[1]) for s in top["outputs"][0]["data"]] == [row[0].index for row in rows]


def _png(digit: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.asarray(digit).reshape(8, 8) * 255 / max(float(np.max(digit)), 1e-6)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bytes_images_decoded_server_side_json_b64_and_binary(http, digits):
    name, output = _names(http)
    pngs = [_png(d) for d in digits.x_test[:2]]
    body = {"inputs": [{"name": name, "shape": [2], "datatype": "BYTES",
                        "data": [{"b64": base64.b64encode(p).decode()} for p in pngs]}]}
    response = requests.post(f"{http}/v2/models/digits32/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    json_scores = np.asarray(response.json()["outputs"][0]["data"]).reshape(2, -1)
    raw = b"".join(struct.pack("<I", len(p)) + p for p in pngs)
    header = {"inputs": [{"name": name, "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    data, headers = _binary_body(header, raw)
    binary = requests.post(f"{http}/v2/models/digits32/infer", data=data, headers=headers, timeout=60).json()
    np.testing.assert_allclose(np.asarray(binary["outputs"][0]["data"]).reshape(2, -1), json_scores, rtol=1e-6)


@pytest.mark.parametrize("body, headers, needle", [
    (b"{not json", {}, "not valid JSON"),
    (b'{"inputs": [{"name": "x", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [1, 2]}]}', {}, "needs 64"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}', {}, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}', {}, "non-negative"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', {}, "must be numbers"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}xy',
     {"Inference-Header-Content-Length": "JSON"}, "binary_data_size 4 runs past"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "99999"}, "header is 99999 bytes"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "abc"}, "byte count"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 99999999999999}}]}',
     {"Inference-Header-Content-Length": "JSON"}, "runs past the end"),
    (b'[1, 2]', {}, "JSON object"),
    (b'{"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}, "has no input 'nope'"),
])
def test_malformed_requests_are_400_with_a_clear_message(http, body, headers, needle):
    if headers.get("Inference-Header-Content-Length") == "JSON":  # the JSON part, binary bytes after it
        headers = {"Inference-Header-Content-Length": str(len(body.rsplit(b"}", 1)[0]) + 1)}
    response = requests.post(f"{http}/v2/models/digits32/infer", data=body, headers=headers, timeout=60)
    assert response.status_code == 400, (response.status_code, response.text)
    assert needle in response.json()["error"], response.json()
    assert requests.get(f"{http}/v2/health/live", timeout=30).status_code == 200


def _raw_http(port: int, request: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_wrong_content_lengths_and_huge_declared_sizes(served_digits, http):
    port = served_digits.http_port
    huge = _raw_http(port, b"POST /v2/models/digits32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n{}")
    assert b" 400 " in huge.split(b"\r\n")[0] and b"exceeds kvd's limit" in huge
    short = _raw_http(port, b"POST /v2/models/digits32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"inputs\": []}")
    assert b" 500 " not in short.split(b"\r\n")[0]
    garbage = _raw_http(port, b"POST /v2/models/digits32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n{}")
    assert garbage == b"" or b" 400 " in garbage.split(b"\r\n")[0]
    assert requests.get(f"{http}/v2/health/live", timeout=30).status_code == 200
    assert served_digits.process.poll() is None


def _content_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def test_a_body_shorter_than_its_content_length_gets_400_not_a_hang(served_digits):
    with socket.create_connection(("127.0.0.1", served_digits.http_port), timeout=60) as sock:
        sock.sendall(b"POST /v2/models/digits32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"inputs\": []}")
        answer = sock.recv(65536)  # the connection stays open: kvd must answer on its own
        while b"\r\n\r\n" in answer and len(answer.partition(b"\r\n\r\n")[2]) < _content_length(answer):
            more = sock.recv(65536)  # the body may come in a packet of its own
            if not more:
                break
            answer += more
    assert answer.split(b"\r\n")[0].endswith(b"400 Bad Request") and b"stopped arriving after 14 bytes of the 500" in answer


def test_repository_routes(http):
    index = requests.post(f"{http}/v2/repository/index", json={}, timeout=30).json()
    assert {"digits", "digits32"} <= {row["name"] for row in index}
    assert requests.post(f"{http}/v2/repository/models/nope/unload", timeout=30).status_code == 404
    assert requests.post(f"{http}/v2/repository/models/digits/load", json={"parameters": {"version": "1"}}, timeout=120).status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_health_metadata_infer(http, digits):
    assert subprocess.run(["curl", "-sf", f"{http}/v2/health/ready"], timeout=30).returncode == 0
    metadata = json.loads(subprocess.run(["curl", "-sf", f"{http}/v2/models/digits32"], capture_output=True, timeout=30).stdout)
    x = digits.x_test[:1]
    body = json.dumps({"inputs": [{"name": metadata["inputs"][0]["name"], "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]})
    out = subprocess.run(["curl", "-sf", "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                          f"{http}/v2/models/digits32/infer"], capture_output=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["outputs"][0]["shape"] == [1, 10]


def test_compressed_bodies_and_unimplemented_routes(http, digits, grpc_answer):
    import gzip
    import zlib

    name, output = _names(http)
    x = digits.x_test[:4]
    body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = requests.post(f"{http}/v2/models/digits32/infer", data=data, headers={"Content-Encoding": encoding}, timeout=60)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.asarray(response.json()["outputs"][0]["data"]).reshape(4, -1), grpc_answer[output], rtol=1e-6)
    bomb = gzip.compress(b" " * (300 * 1024 * 1024))  # 300 MiB of spaces in ~300 KB
    response = requests.post(f"{http}/v2/models/digits32/infer", data=bomb, headers={"Content-Encoding": "gzip"}, timeout=60)
    assert response.status_code == 400 and "decompressed body exceeds" in response.json()["error"]
    bad = requests.post(f"{http}/v2/models/digits32/infer", data=b"xx", headers={"Content-Encoding": "br"}, timeout=60)
    assert bad.status_code == 400 and "not supported" in bad.json()["error"]
    stats = requests.get(f"{http}/v2/models/digits32/stats", timeout=30)
    assert stats.status_code == 501 and "not implemented" in stats.json()["error"]
