"""TF Serving's gRPC API on kvd's gRPC port: ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata)
and ``ModelService`` (GetModelStatus), so clients built on tensorflow-serving-api work unchanged.

Thin, like the v2 servicer: TensorProto -> numpy, the data plane, numpy -> TensorProto. Each RPC is one call of
a pure request/response helper around the data plane. ``add_to_server`` registers the ``async def`` servicers on
kvd's ``grpc.aio.Server`` (they reach the data plane through ``kvserve.server.api.infer_adapter``).
Classify, Regress, MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED (the generated base class
raises NotImplementedError, which the error interceptor maps).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from kvserve.proto import tensorflow_serving_pb2 as tfs
from kvserve.proto import tensorflow_serving_pb2_grpc as tfs_grpc
from kvserve.proto import tensorflow_tensor_pb2 as tf
from kvserve.proto.tf_tensors import from_numpy, to_numpy
from kvserve.server.api import infer_adapter
from kvserve.server.api.grpc.calls import call_deadline
from kvserve.server.api.tfserving_models import PREDICT_METHOD, SIGNATURE, check_signature, signature, statuses, version_text
from kvserve.server.errors import InvalidArgument
from kvserve.server.models.manager import ModelManager, ModelVersion

SIGNATURE_DEF = "signature_def"


def _spec_version(spec: tfs.ModelSpec) -> tuple[int | None, str]:
    choice = spec.WhichOneof("version_choice")
    # version 0 is OVMS's "the default version" (its clients send it unless told otherwise); kvd's start at 1
    return (spec.version.value or None if choice == "version" else None), (spec.version_label if choice == "version_label" else "")


def _require_name(spec: tfs.ModelSpec) -> str:
    if not spec.name:
        raise InvalidArgument("model_spec.name is empty; name the model to call")
    return spec.name


def predict_request(manager: Any, request: tfs.PredictRequest) -> tuple[str, str, dict[str, np.ndarray], list[str]]:
    """(model name, version text, inputs, requested outputs) of a PredictRequest."""
    name = _require_name(request.model_spec)
    check_signature(request.model_spec.signature_name)
    if not request.inputs:
        raise InvalidArgument("PredictRequest.inputs is empty; send one TensorProto per model input")
    inputs = {key: to_numpy(key, tensor) for key, tensor in request.inputs.items()}
    return name, version_text(manager, name, *_spec_version(request.model_spec)), inputs, list(request.output_filter)


def _model_spec(target: tfs.ModelSpec, model: ModelVersion) -> None:
    target.name = model.name
    target.version.value = model.version
    target.signature_name = SIGNATURE


def predict_response(model: ModelVersion, outputs: dict[str, np.ndarray]) -> tfs.PredictResponse:
    response = tfs.PredictResponse()
    _model_spec(response.model_spec, model)
    for key, array in outputs.items():
        response.outputs[key].CopyFrom(from_numpy(array))
    return response


def _tensor_info(target: tf.TensorInfo, name: str, dtype: str, shape: list[int]) -> None:
    target.name = name
    target.dtype = tf.DataType.Value(dtype)
    for dim in shape:
        target.tensor_shape.dim.add(size=int(dim))


def metadata_response(model: ModelVersion) -> tfs.GetModelMetadataResponse:
    signatures = tfs.SignatureDefMap()
    definition = signatures.signature_def[SIGNATURE]
    definition.method_name = PREDICT_METHOD
    described = signature(model)
    for name, dtype, shape in described["inputs"]:
        _tensor_info(definition.inputs[name], name, dtype, shape)
    for name, dtype, shape in described["outputs"]:
        _tensor_info(definition.outputs[name], name, dtype, shape)
    response = tfs.GetModelMetadataResponse()
    _model_spec(response.model_spec, model)
    response.metadata[SIGNATURE_DEF].Pack(signatures)
    return response


def metadata_model(manager: Any, request: tfs.GetModelMetadataRequest) -> tuple[str, str]:
    name = _require_name(request.model_spec)
    fields = list(request.metadata_field)
    if fields != [SIGNATURE_DEF]:
        raise InvalidArgument(f"metadata_field must be ['{SIGNATURE_DEF}'] (the only metadata kvd serves), got {fields}")
    return name, version_text(manager, name, *_spec_version(request.model_spec))


def status_response(manager: Any, request: tfs.GetModelStatusRequest) -> tfs.GetModelStatusResponse:
    name = _require_name(request.model_spec)
    number, label = _spec_version(request.model_spec)
    if label:
        text = version_text(manager, name, None, label)
        number = int(text) if text else manager.get(name).version
    response = tfs.GetModelStatusResponse()
    for row in statuses(manager, name, number):
        status = response.model_version_status.add(version=row.version, state=tfs.ModelVersionStatus.State.Value(row.state))
        status.status.error_code = row.error_code
        status.status.error_message = row.error_message
    return response


class AsyncPredictionServicer(tfs_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata on grpc.aio: nothing blocks the event loop; Predict hands the call's gRPC
    deadline to the data plane, as the v2 door does (a call whose deadline passes while queued is dropped)."""

    def __init__(self, manager: ModelManager, dataplane: Any) -> None:
        self.manager = manager
        self.dataplane = dataplane

    async def Predict(self, request: tfs.PredictRequest, context: grpc.aio.ServicerContext) -> tfs.PredictResponse:
        name, version, inputs, requested = predict_request(self.manager, request)
        model, outputs = await infer_adapter.infer(self.dataplane, name, version, inputs, requested or None, None,
                                                   call_deadline(context))
        return predict_response(model, outputs)

    async def GetModelMetadata(self, request: tfs.GetModelMetadataRequest, context: grpc.aio.ServicerContext) -> tfs.GetModelMetadataResponse:
        name, version = metadata_model(self.manager, request)
        return metadata_response(await infer_adapter.blocking(self.manager.get, name, version))


    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _unimplemented(context, "Classify")

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _unimplemented(context, "Regress")

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _unimplemented(context, "MultiInference")


async def _unimplemented(context: grpc.aio.ServicerContext, method: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by kvserve; use Predict")


class AsyncModelServicer(tfs_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def GetModelStatus(self, request: tfs.GetModelStatusRequest, context: grpc.aio.ServicerContext) -> tfs.GetModelStatusResponse:
        return await infer_adapter.blocking(status_response, self.manager, request)

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _unimplemented(context, "HandleReloadConfigRequest")


def add_to_server(manager: ModelManager, dataplane: Any, server: grpc.aio.Server) -> None:
    """Register both TF Serving services on kvd's grpc.aio server."""
    tfs_grpc.add_PredictionServiceServicer_to_server(AsyncPredictionServicer(manager, dataplane), server)
    tfs_grpc.add_ModelServiceServicer_to_server(AsyncModelServicer(manager), server)
