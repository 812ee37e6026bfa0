"""OpenVINO Model Server's own Python client (ovmsclient), unchanged, against kvd: model status, metadata,
predict and a missing model over TF Serving gRPC, and status and predict over TF Serving REST.

ovmsclient registers its own copies of TensorFlow's protos, so it runs in a child Python of its own (TensorFlow
is imported in this process)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ovmsclient", reason="ovmsclient is a dev dependency (pip install -e '.[dev]')")

SCRIPT = r"""
import json, sys
import numpy as np
import ovmsclient

grpc_address, http_address, name, x_path = sys.argv[1:5]
x = np.load(x_path)
found = {}
for door, client in (("grpc", ovmsclient.make_grpc_client(grpc_address)), ("http", ovmsclient.make_http_client(http_address))):
    found[door + "_status"] = {str(k): v["state"] for k, v in client.get_model_status(name).items()}
    if door == "grpc":
        meta = client.get_model_metadata(name)
        found["grpc_metadata"] = {"version": meta["model_version"], "inputs": meta["inputs"], "outputs": meta["outputs"]}
        input_name = next(iter(meta["inputs"]))
    found[door + "_predict"] = np.asarray(client.predict({input_name: x}, name)).tolist()
    try:
        client.predict({input_name: x}, "no-such-model")
        found[door + "_missing"] = "answered"
    except ovmsclient.tfs_compat.base.errors.ModelNotFoundError as error:
        found[door + "_missing"] = str(error)
print(json.dumps(found))
"""


def test_ovmsclient_works_unchanged(served_digits, digits, tmp_path):
    x = digits.x_test[:3].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with served_digits.client() as client:
        expected = client.infer("digits32", x)["probabilities"]
    run = subprocess.run([sys.executable, "-c", SCRIPT, served_digits.address, f"127.0.0.1:{served_digits.http_port}",
                          "digits32", str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["grpc_status"] == found["http_status"] == {"1": "AVAILABLE"}  # version 0 = the default version
    assert found["grpc_metadata"]["version"] == 1
    (name, spec), = found["grpc_metadata"]["inputs"].items()
    assert spec == {"shape": [-1, 8, 8, 1], "dtype": "DT_FLOAT"}
    assert found["grpc_metadata"]["outputs"]["probabilities"] == {"shape": [-1, 10], "dtype": "DT_FLOAT"}
    for door in ("grpc", "http"):
        np.testing.assert_allclose(np.array(found[door + "_predict"], np.float32), expected, rtol=0, atol=1e-6)
        assert "model 'no-such-model' not found" in found[door + "_missing"]
