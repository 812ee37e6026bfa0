"""``inference.GRPCInferenceService`` (KServe v2 + Triton extensions): thin, decode -> data plane -> encode.

RPCs not overridden here (statistics, shared memory, trace, log settings) answer UNIMPLEMENTED from the
generated base class.
"""

from __future__ import annotations

import grpc

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import grpc_service_pb2_grpc as pb_grpc
from kvserve.proto import model_config_pb2 as mc
from kvserve.proto.tensors import decode_request_inputs, encode_response_outputs
from kvserve.proto.wire import InferResponseView
from kvserve.server.dataplane import DataPlane
from kvserve.server.errors import InvalidArgument, NotFound
from kvserve.server.models.manager import READY, ModelManager, ModelVersion
from kvserve.server.models.repository import parse_version
from kvserve.server.settings import Settings
from kvserve.server.version import SERVER_NAME, SERVER_VERSION

EXTENSIONS = ["model_repository", "model_configuration", "schedule_policy"]


def platform_of(model: ModelVersion) -> str:
    """Where the model runs, in Triton's platform field: e.g. ``openvino:CPU``."""
    return f"{'tensorflow' if model.backend == 'TF' else 'openvino'}:{model.backend}" if model.backend else "openvino"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, dataplane: DataPlane, settings: Settings) -> None:
        self.manager = manager
        self.dataplane = dataplane
        self.settings = settings

    # --- health -------------------------------------------------------------------------------------
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.manager.ready())

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        try:
            model = self.manager.get(request.name, request.version)
        except (NotFound, InvalidArgument):
            raise
        except Exception:  # noqa: BLE001 - not ready is an answer, not an error
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.state == READY)

    # --- metadata -----------------------------------------------------------------------------------
    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        model = self.manager.get(request.name, request.version)
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self.manager.repository.versions(model.name)],
            platform=platform_of(model),
        )
        for spec in model.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        for spec in model.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        return response

    def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.ServicerContext) -> pb.ModelConfigResponse:
        model = self.manager.get(request.name, request.version)
        batched = all(spec.shape and spec.shape[0] < 0 for spec in model.inputs + model.outputs)
        config = mc.ModelConfig(
            name=model.name,
            platform=platform_of(model),
            backend="tensorflow" if model.backend == "TF" else "openvino",
            max_batch_size=self.settings.max_batch_size if batched else 0,
        )
        for spec in model.inputs:
            config.input.add(name=spec.name, data_type=mc.DataType.Value(f"TYPE_{_config_type(spec.datatype)}"),
                             dims=list(spec.shape[1:] if batched else spec.shape))
        for spec in model.outputs:
            config.output.add(name=spec.name, data_type=mc.DataType.Value(f"TYPE_{_config_type(spec.datatype)}"),
                              dims=list(spec.shape[1:] if batched else spec.shape))
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU if model.backend in ("CPU", "TF") else mc.ModelInstanceGroup.KIND_MODEL, count=1)
        return pb.ModelConfigResponse(config=config)

    # --- inference ----------------------------------------------------------------------------------
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        inputs = decode_request_inputs(request)
        requested = [output.name for output in request.outputs]
        model, outputs = self.dataplane.infer(request.model_name, request.model_version, inputs, requested,
                                              _classification(request), call=context)
        # A view, serialized by kvserve.server.api.grpc.infer_codec without copying the outputs into protobuf first.
        response = InferResponseView(pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id))
        encode_response_outputs(response, outputs)
        return response

    # --- repository ---------------------------------------------------------------------------------
    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for entry in self.manager.entries():
            if request.ready and entry.state != READY:
                continue
            response.models.add(name=entry.name, version=str(entry.version) if entry.version else "", state=entry.state, reason=entry.reason)
        return response

    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.ServicerContext) -> pb.RepositoryModelLoadResponse:
        version = None
        devices = None
        if "version" in request.parameters:
            version = parse_version(_parameter_text(request.parameters["version"]))
        if "devices" in request.parameters:
            devices = [d.strip().upper() for d in _parameter_text(request.parameters["devices"]).split(",") if d.strip()]
        self.manager.load(request.model_name, version, devices)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: grpc.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        if not self.manager.repository.versions(request.model_name):
            raise NotFound(self.manager.not_found_message(request.model_name))
        self.manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _int_parameter(parameter: pb.InferParameter, what: str) -> int:
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"{what} must be an integer parameter (int64_param)")
    return int(getattr(parameter, kind))


def _classification(request: pb.ModelInferRequest) -> dict[str, int]:
    """Top-k requests: Triton's per-output ``classification`` parameter, or the request-level ``top_k``
    (which applies to every requested output, or to the first output when none is named)."""
    counts = {o.name: _int_parameter(o.parameters["classification"], f"output '{o.name}' classification")
              for o in request.outputs if "classification" in o.parameters}
    if "top_k" in request.parameters:
        k = _int_parameter(request.parameters["top_k"], "top_k")
        names = [o.name for o in request.outputs] or [""]
        counts.update({name: counts.get(name, k) for name in names})
    return counts


def _config_type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype


def _parameter_text(parameter: pb.ModelRepositoryParameter) -> str:
    kind = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, kind) if kind else ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
