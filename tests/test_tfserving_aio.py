"""The TF Serving servicers on a grpc.aio server (how they will be registered once kvd's core is async), with a
real model manager and data plane over a copy of the served digits model."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from opsutil import copy_model

from kvserve.proto import tensorflow_serving_pb2 as tfs
from kvserve.proto import tensorflow_serving_pb2_grpc as tfs_grpc
from kvserve.proto.tf_tensors import from_numpy, to_numpy


@pytest.fixture
def world(tmp_path, served_digits):
    from kvserve.plugins.manager import load_plugins
    from kvserve.server.dataplane import DataPlane
    from kvserve.server.models.manager import ModelManager
    from kvserve.server.models.repository import Repository
    from kvserve.server.settings import Settings

    copy_model(served_digits.repository, "digits32", tmp_path / "repo")
    settings = Settings(repository=tmp_path / "repo")
    manager = ModelManager(Repository(settings.repository), load_plugins(), settings)
    manager.load_all()
    yield manager, DataPlane(manager)
    manager.close()


def test_tf_serving_on_grpc_aio(world, served_digits, digits):
    from kvserve.server.api.grpc import tfserving

    manager, dataplane = world
    x = digits.x_test[:3].astype(np.float32)
    with served_digits.client() as client:
        expected = next(iter(client.infer("digits32", x).values()))

    async def main() -> dict:
        server = grpc.aio.server()
        tfserving.add_to_server(manager, dataplane, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                predictions, models = tfs_grpc.PredictionServiceStub(channel), tfs_grpc.ModelServiceStub(channel)
                status = await models.GetModelStatus(tfs.GetModelStatusRequest(model_spec=tfs.ModelSpec(name="digits32")))
                metadata = await predictions.GetModelMetadata(tfs.GetModelMetadataRequest(
                    model_spec=tfs.ModelSpec(name="digits32"), metadata_field=["signature_def"]))
                signatures = tfs.SignatureDefMap()
                metadata.metadata["signature_def"].Unpack(signatures)
                name = next(iter(signatures.signature_def["serving_default"].inputs))
                request = tfs.PredictRequest(model_spec=tfs.ModelSpec(name="digits32"))
                request.inputs[name].CopyFrom(from_numpy(x))
                answer = await predictions.Predict(request)
                try:
                    await predictions.Classify(tfs.ClassificationRequest())
                    classify = "OK"
                except grpc.aio.AioRpcError as error:
                    classify = error.code().name
                return {"status": status, "answer": answer, "classify": classify}
        finally:
            await server.stop(0)

    result = asyncio.run(main())
    assert result["status"].model_version_status[0].state == tfs.ModelVersionStatus.AVAILABLE
    (output,) = result["answer"].outputs.values()
    np.testing.assert_allclose(to_numpy("out", output), expected, rtol=1e-5, atol=1e-6)
    assert result["classify"] == "UNIMPLEMENTED"
