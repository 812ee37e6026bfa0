"""``inference.GRPCInferenceService`` (KServe v2 + Triton extensions): thin, decode -> data plane -> encode.

RPCs not overridden here (statistics, shared memory, trace, log settings) answer UNIMPLEMENTED from the
generated base class.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

import grpc

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import grpc_service_pb2_grpc as pb_grpc
from kvserve.proto import model_config_pb2 as mc
from kvserve.proto.tensors import decode_request_inputs, encode_response_outputs
from kvserve.proto.wire import (InferResponseView, Serialized, StreamResponse, parse_infer_request, serialize,
                                serialize_in_stream)
from kvserve.server.api.grpc.calls import call_deadline
from kvserve.server.api.grpc.interceptors import status_of
from kvserve.server.api.grpc.register import add_service
from kvserve.server.batching import BatchPolicy, batchable
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
    """Coroutines on the event loop; anything that may touch the disk or load a model runs on a worker thread,
    so health and metadata answer whatever the data plane is doing. ``context`` may be None (the HTTP door
    calls the metadata methods directly)."""

    def __init__(self, manager: ModelManager, dataplane: DataPlane, settings: Settings) -> None:
        self.manager = manager
        self.dataplane = dataplane
        self.settings = settings

    # --- health -------------------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return LIVE

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.manager.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return await asyncio.to_thread(self._model_ready, request)

    def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            model = self.manager.get(request.name, request.version)
        except (NotFound, InvalidArgument):
            raise
        except Exception:  # noqa: BLE001 - not ready is an answer, not an error
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.state == READY)

    # --- metadata -----------------------------------------------------------------------------------
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return await asyncio.to_thread(self._model_metadata, request)

    def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
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

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return await asyncio.to_thread(self._model_config, request)

    def _model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
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
        policy = BatchPolicy.from_settings(model.manifest.get("dynamic_batching"))
        if policy is not None and batchable(model.inputs, model.outputs):  # advertised only when on
            config.dynamic_batching.max_queue_delay_microseconds = round(policy.max_queue_delay_s * 1e6)
            config.dynamic_batching.preferred_batch_size.extend(policy.preferred_sizes)
        return pb.ModelConfigResponse(config=config)

    # --- inference ----------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Serialized:
        return await self._infer(request, context, serialize)

    async def _infer(self, request: pb.ModelInferRequest, context: Any, frame: Callable[[InferResponseView], bytes]) -> Serialized:
        """Run ``request``; the response is framed (as ModelInferResponse, or as a stream's message) while the
        runner still holds the outputs: one copy from OpenVINO's output tensors into the bytes gRPC sends."""
        inputs = decode_request_inputs(request)
        requested = [output.name for output in request.outputs]
        deadline = _deadline(context, request)
        request_id = request.id

        def respond(model: ModelVersion, outputs: dict[str, Any]) -> Serialized:
            version = str(model.version)
            response = InferResponseView(pb.ModelInferResponse(model_name=model.name, model_version=version, id=request_id))
            encode_response_outputs(response, outputs)
            return Serialized(frame(response), version)

        _, answer = await self.dataplane.infer(request.model_name, request.model_version, inputs, requested,
                                               _classification(request), deadline, respond)
        return answer

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Serialized | StreamResponse]:
        """Triton's streaming inference: every request on the stream is answered by one message on the response
        stream, in the order sent. Requests run concurrently, up to the model queue's bound per stream (beyond
        it kvd stops reading, and gRPC's flow control holds the client back), so one stream keeps the model as
        busy as that many unary callers. A request that fails is answered with its error and the stream goes on."""
        window = asyncio.Semaphore(max(1, self.settings.max_queue))
        pending: asyncio.Queue[asyncio.Future[Serialized | StreamResponse] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    pending.put_nowait(asyncio.ensure_future(self._stream_one(request, context)))
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await pending.get()) is not None:
                response = await answer
                window.release()
                yield response
            await reader  # the request stream's own error (the client broke it), if any
        finally:
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None:
                    left.cancel()

    async def _stream_one(self, request: Any, context: Any) -> Serialized | StreamResponse:
        try:
            return await self._infer(request, context, serialize_in_stream)
        except Exception as error:  # noqa: BLE001 - one request's error, answered on the stream
            code, message = status_of(STREAM_METHOD, error)
            try:
                echo = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
            except Exception:  # noqa: BLE001 - bytes that were no request at all
                echo = None
            return StreamResponse(echo, f"{code.name}: {message}")

    # --- repository ---------------------------------------------------------------------------------
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return await asyncio.to_thread(self._repository_index, request)

    def _repository_index(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for entry in self.manager.entries():
            if request.ready and entry.state != READY:
                continue
            response.models.add(name=entry.name, version=str(entry.version) if entry.version else "", state=entry.state, reason=entry.reason)
        return response

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> pb.RepositoryModelLoadResponse:
        version = None
        devices = None
        if "version" in request.parameters:
            version = parse_version(_parameter_text(request.parameters["version"]))
        if "devices" in request.parameters:
            devices = [d.strip().upper() for d in _parameter_text(request.parameters["devices"]).split(",") if d.strip()]
        await asyncio.to_thread(self.manager.load, request.model_name, version, devices)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any) -> pb.RepositoryModelUnloadResponse:
        await asyncio.to_thread(self._unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _unload(self, name: str) -> None:
        if not self.manager.repository.versions(name):
            raise NotFound(self.manager.not_found_message(name))
        self.manager.unload(name)


SERVICE = "inference.GRPCInferenceService"
STREAM_METHOD = f"/{SERVICE}/ModelStreamInfer"
LIVE = pb.ServerLiveResponse(live=True)


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the v2 service; ModelInfer and ModelStreamInfer with kvserve's zero-copy codec (``kvserve.proto.wire``)."""
    add_service(server, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb, servicer,
                {"ModelInfer": (parse_infer_request, serialize), "ModelStreamInfer": (parse_infer_request, serialize)})


def _deadline(context: Any, request: pb.ModelInferRequest) -> float | None:
    """When nobody awaits the answer any more (``time.monotonic()``): the call's gRPC deadline, or Triton's
    request parameter ``timeout`` (microseconds), whichever comes first; None without either."""
    deadline = call_deadline(context)
    if "timeout" in request.parameters:
        micros = _int_parameter(request.parameters["timeout"], "timeout (microseconds)")
        if micros > 0:
            own = time.monotonic() + micros / 1e6
            deadline = own if deadline is None else min(deadline, own)
    return deadline


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
