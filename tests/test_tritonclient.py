"""Triton's own Python client (tritonclient[grpc] 2.41.0) against kvd, over the KServe v2 protocol.

tritonclient's generated stubs use the protobuf package ``inference`` too, so importing them next to
``kvserve.proto`` in one process would collide in the descriptor pool. The tritonclient side therefore runs in
a subprocess that never imports kvserve; it writes a JSON report and the inference output (.npy), and the
test compares them with what ``kvserve.client.Client`` says about the same server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from precision import promised, rel_diff

TRITON_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    address, input_path, output_path, report_path = sys.argv[1:5]
    report = {}
    client = grpcclient.InferenceServerClient(url=address)
    report["live"] = client.is_server_live()
    report["ready"] = client.is_server_ready()
    report["model_ready"] = client.is_model_ready("digits")
    report["server_metadata"] = client.get_server_metadata(as_json=True)
    metadata = client.get_model_metadata("digits", as_json=True)
    report["model_metadata"] = metadata
    report["model_config"] = client.get_model_config("digits", as_json=True)
    report["repository_index"] = client.get_model_repository_index(as_json=True)

    x = np.load(input_path)
    input_name = metadata["inputs"][0]["name"]
    output_name = metadata["outputs"][0]["name"]
    infer_input = grpcclient.InferInput(input_name, list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer("digits", [infer_input], outputs=[grpcclient.InferRequestedOutput(output_name)])
    output = result.as_numpy(output_name)
    np.save(output_path, output)
    report["infer"] = {"input": input_name, "output": output_name, "response": result.get_response(as_json=True)}

    try:
        client.infer("no-such-model", [infer_input])
    except InferenceServerException as error:
        report["unknown_model_error"] = {"type": type(error).__name__, "message": error.message(), "status": error.status()}
    else:
        report["unknown_model_error"] = None

    # Streaming (start_stream / async_stream_infer): one row per request, an unknown model in the middle.
    import queue
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for row in range(len(x)):
        stream_input = grpcclient.InferInput(input_name, [1, *x.shape[1:]], "FP32")
        stream_input.set_data_from_numpy(x[row:row + 1])
        client.async_stream_infer("no-such-model" if row == 3 else "digits", [stream_input], request_id=f"row{row}")
    stream_rows, stream_ids, stream_errors = [], [], []
    for _ in range(len(x)):
        result, error = answers.get(timeout=60)
        if error is not None:
            stream_errors.append(error.message())
            stream_rows.append(None)
        else:
            stream_ids.append(result.get_response().id)
            stream_rows.append(result.as_numpy(output_name)[0].tolist())
    client.stop_stream()
    report["stream"] = {"rows": stream_rows, "ids": stream_ids, "errors": stream_errors}

    client.close()
    report["kvserve_imported"] = any(name == "kvserve" or name.startswith("kvserve.") for name in sys.modules)
    with open(report_path, "w") as handle:
        json.dump(report, handle)
    """
)


def run_tritonclient(address: str, x: np.ndarray, tmp_path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """Run TRITON_SCRIPT in a fresh interpreter (cwd = tmp_path, so no repo folder shadows a package)."""
    script = tmp_path / "triton_side.py"
    script.write_text(TRITON_SCRIPT)
    input_path, output_path, report_path = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "report.json"
    np.save(input_path, x)
    done = subprocess.run([sys.executable, str(script), address, str(input_path), str(output_path), str(report_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"tritonclient subprocess failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(report_path.read_text()), np.load(output_path)


@pytest.fixture(scope="module")
def triton_run(served_digits, digits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tritonclient session against the shared kvd, plus kvserve.client's view of the same model."""
    x = np.ascontiguousarray(digits.x_test[:7], dtype=np.float32)
    report, triton_output = run_tritonclient(served_digits.address, x, tmp_path_factory.mktemp("triton"))
    with served_digits.client() as client:
        metadata = client.metadata("digits")
        kvserve_output = client.infer("digits", x)
        manifest = client.describe("digits")["manifest"]
    return {"report": report, "triton_output": triton_output, "x": x, "metadata": metadata, "kvserve_output": kvserve_output,
            "manifest": manifest}


def test_subprocess_stays_clear_of_kvserve(triton_run):
    assert triton_run["report"]["kvserve_imported"] is False


def test_health(triton_run):
    report = triton_run["report"]
    assert report["live"] is True
    assert report["ready"] is True
    assert report["model_ready"] is True


def test_server_metadata(triton_run, served_digits):
    report = triton_run["report"]
    with served_digits.client() as client:
        expected = client.server_metadata()
    assert report["server_metadata"]["name"] == expected["name"]
    assert report["server_metadata"]["version"] == expected["version"]
    assert report["server_metadata"].get("extensions", []) == expected["extensions"]


def test_model_metadata_matches_kvserve_client(triton_run):
    triton_meta, kv_meta = triton_run["report"]["model_metadata"], triton_run["metadata"]
    assert triton_meta["name"] == kv_meta["name"] == "digits"
    assert triton_meta["versions"] == kv_meta["versions"]
    assert triton_meta["platform"] == kv_meta["platform"]

    def signature(tensors):
        # tritonclient's JSON renders int64 shapes as strings (protobuf's JSON mapping): compare as ints.
        return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in tensors]

    assert signature(triton_meta["inputs"]) == signature(kv_meta["inputs"])
    assert signature(triton_meta["outputs"]) == signature(kv_meta["outputs"])
    assert signature(kv_meta["inputs"]) == [(kv_meta["inputs"][0]["name"], "FP32", [-1, 8, 8, 1])]
    assert [int(d) for d in kv_meta["outputs"][0]["shape"]] == [-1, 10]


def test_model_config(triton_run):
    config = triton_run["report"]["model_config"]["config"]
    kv_meta = triton_run["metadata"]
    assert config["name"] == "digits"
    assert int(config.get("max_batch_size", 0)) > 0
    assert len(config["input"]) == 1
    assert config["input"][0]["name"] == kv_meta["inputs"][0]["name"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == [8, 8, 1]
    assert config["output"][0]["name"] == kv_meta["outputs"][0]["name"]
    assert [int(d) for d in config["output"][0]["dims"]] == [10]


def test_repository_index(triton_run):
    models = triton_run["report"]["repository_index"].get("models", [])
    by_name = {m["name"]: m for m in models}
    assert {"digits", "digits32"} <= set(by_name)
    assert by_name["digits"]["state"] == "READY"
    assert by_name["digits32"]["state"] == "READY"


def test_infer_matches_kvserve_client(triton_run):
    report, kv_meta = triton_run["report"], triton_run["metadata"]
    output_name = kv_meta["outputs"][0]["name"]
    assert report["infer"]["input"] == kv_meta["inputs"][0]["name"]
    assert report["infer"]["response"]["model_name"] == "digits"
    triton_output = triton_run["triton_output"]
    kvserve_output = triton_run["kvserve_output"][output_name]
    assert triton_output.dtype == np.float32
    assert triton_output.shape == kvserve_output.shape == (len(triton_run["x"]), 10)
    np.testing.assert_allclose(triton_output, kvserve_output, rtol=0, atol=1e-6)


def test_infer_agrees_with_keras(triton_run, digits):
    # as close to Keras as kvd promises for the precision the model executes in, same top-1
    triton_output = triton_run["triton_output"]
    reference = digits.keras_probs[: len(triton_run["x"])]
    assert rel_diff(triton_output, reference) <= promised(triton_run["manifest"])
    assert (triton_output.argmax(1) == reference.argmax(1)).all()


def test_unknown_model_error(triton_run):
    error = triton_run["report"]["unknown_model_error"]
    assert error is not None, "infer on an unknown model did not raise InferenceServerException"
    assert error["type"] == "InferenceServerException"
    assert "not found" in error["message"].lower(), error
    assert error["status"] == "StatusCode.NOT_FOUND", error


def test_stream_infer_answers_each_request_in_order(triton_run):
    """tritonclient's streaming API against ModelStreamInfer: each row answered in order, the unknown model's
    request answered with its error while the stream goes on."""
    stream = triton_run["report"]["stream"]
    rows = len(triton_run["x"])
    assert stream["ids"] == [f"row{i}" for i in range(rows) if i != 3]
    assert len(stream["errors"]) == 1 and stream["errors"][0].startswith("NOT_FOUND: ") and "no-such-model" in stream["errors"][0]
    assert stream["rows"][3] is None
    expected = triton_run["kvserve_output"][triton_run["metadata"]["outputs"][0]["name"]]
    for i, row in enumerate(stream["rows"]):
        if i != 3:  # a row alone may take other kernels than the batch of 7: as close as the precision promises
            assert rel_diff(np.asarray(row, np.float32), expected[i]) <= promised(triton_run["manifest"])
            assert int(np.argmax(row)) == int(np.argmax(expected[i]))
