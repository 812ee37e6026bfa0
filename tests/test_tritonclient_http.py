"""Triton's HTTP client (tritonclient.http) and perf_analyzer -i http against kvd's HTTP door.

kvserve's stubs live in a private descriptor pool, so tritonclient imports in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _client(served_digits) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=served_digits.http_url.removeprefix("http://"), network_timeout=120)


def test_health_metadata_config_index(served_digits):
    client = _client(served_digits)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits32")
    assert client.get_server_metadata()["name"] == "kvserve"
    assert client.get_model_metadata("digits32")["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert client.get_model_config("digits32")["max_batch_size"] > 0
    assert {"digits", "digits32"} <= {m["name"] for m in client.get_model_repository_index()}
    client.close()


@pytest.mark.parametrize("binary_in, binary_out", [(False, False), (True, True), (True, False), (False, True)])
def test_infer_json_and_binary_match_grpc_client(served_digits, digits, binary_in, binary_out):
    x = digits.x_test[:5].astype(np.float32)
    with served_digits.client() as kv:
        expected = kv.infer("digits32", x)
    client = _client(served_digits)
    metadata = client.get_model_metadata("digits32")
    input_name, output_name = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]
    infer_input = httpclient.InferInput(input_name, list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary_in)
    result = client.infer("digits32", [infer_input], outputs=[httpclient.InferRequestedOutput(output_name, binary_data=binary_out)])
    np.testing.assert_array_equal(result.as_numpy(output_name), expected[output_name])
    top = client.infer("digits32", [infer_input], outputs=[httpclient.InferRequestedOutput(output_name, class_count=3)])
    best = [int(item.decode().split(":")[1]) for item in top.as_numpy(output_name)[:, 0]]
    assert best == list(expected[output_name].argmax(1))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no-such-model", [infer_input])
    assert "not found" in caught.value.message() and caught.value.status() == "404"
    client.close()


def _perf_analyzer_env() -> dict[str, str] | None:
    binary = Path(sys.executable).with_name("perf_analyzer")
    if not binary.exists():
        return None
    import importlib.util

    paths = []
    spec = importlib.util.find_spec("nvidia")
    for root in list(spec.submodule_search_locations or []) if spec else []:
        lib = Path(root) / "cuda_runtime" / "lib"
        if lib.is_dir():
            paths.append(str(lib))
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(paths + [os.environ.get("LD_LIBRARY_PATH", "")])}
    probe = subprocess.run([str(binary), "--help"], capture_output=True, text=True, env=env, timeout=60)
    return env if "error while loading shared libraries" not in probe.stderr else None


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
def test_perf_analyzer_over_http(served_digits, tmp_path, tensor_format):
    env = _perf_analyzer_env()
    if env is None:
        pytest.skip("perf_analyzer needs libb64-0d and libcudart.so.12 (nvidia-cuda-runtime-cu12) to run")
    out = tmp_path / "pa.csv"
    command = [str(Path(sys.executable).with_name("perf_analyzer")), "-m", "digits32", "-i", "http",
               "-u", served_digits.http_url.removeprefix("http://"), "--concurrency-range", "1:2",
               "--measurement-interval", "1000", "--stability-percentage", "100", "--max-trials", "3", "-f", str(out),
               "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0].startswith("Concurrency") and len(rows) == 3
    assert all(float(row.split(",")[1]) > 0 for row in rows[1:])  # inferences/second
