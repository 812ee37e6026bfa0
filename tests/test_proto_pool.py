"""kvserve's stubs live in a private descriptor pool: kvserve.client, tritonclient.grpc, TensorFlow's own protos
and tensorflow-serving-api import in one process, and our TF Serving messages are wire-compatible with theirs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from kvserve.proto import _pool
from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import tensorflow_serving_pb2 as tfs


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_stubs_register_in_the_private_pool_not_the_default_one():
    from google.protobuf import descriptor_pool

    assert pb.DESCRIPTOR.pool is _pool.POOL and tfs.DESCRIPTOR.pool is _pool.POOL
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName(pb.DESCRIPTOR.name)


def test_kvserve_client_and_tritonclient_grpc_import_in_one_process():
    result = _run("""
        import kvserve.client
        from kvserve.proto import grpc_service_pb2 as ours
        import tritonclient.grpc as triton
        from tritonclient.grpc import service_pb2 as theirs
        request = ours.ModelInferRequest(model_name="m", id="x")
        request.inputs.add(name="a", datatype="FP32", shape=[1])
        parsed = theirs.ModelInferRequest.FromString(request.SerializeToString())
        assert parsed.model_name == "m" and parsed.inputs[0].datatype == "FP32", parsed
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_tensorflow_and_tf_serving_api_import_beside_our_tf_serving_stubs():
    result = _run("""
        from kvserve.proto import tensorflow_serving_pb2 as ours, tensorflow_tensor_pb2 as our_tensor
        import kvserve.client
        from tensorflow.core.framework import tensor_pb2
        from tensorflow_serving.apis import predict_pb2, get_model_status_pb2
        import tritonclient.grpc
        theirs = predict_pb2.PredictRequest()
        theirs.model_spec.name = "digits"
        theirs.model_spec.version.value = 3
        theirs.inputs["x"].dtype = 1
        theirs.inputs["x"].tensor_shape.dim.add(size=2)
        theirs.inputs["x"].float_val.extend([1.5, 2.5])
        theirs.inputs["s"].dtype = 7
        theirs.inputs["s"].string_val.append(b"hi")
        mine = ours.PredictRequest.FromString(theirs.SerializeToString())
        assert mine.model_spec.version.value == 3 and list(mine.inputs["x"].float_val) == [1.5, 2.5], mine
        assert mine.inputs["s"].dtype == our_tensor.DT_STRING and list(mine.inputs["s"].string_val) == [b"hi"]
        status = ours.GetModelStatusResponse()
        status.model_version_status.add(version=2, state=ours.ModelVersionStatus.AVAILABLE).status.error_message = "x"
        back = get_model_status_pb2.GetModelStatusResponse.FromString(status.SerializeToString())
        assert back.model_version_status[0].state == 30 and back.model_version_status[0].version == 2
        assert type(tensor_pb2.TensorProto()) is not type(our_tensor.TensorProto())
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
