"""KServe v2 REST routes (the Open Inference Protocol over HTTP, as Triton serves it).

Metadata, config and repository answers come from the v2 gRPC servicer's own methods (one definition of what
a model looks like on the wire), converted to JSON; inference goes through the data plane like every door.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.server.api.infer_adapter import blocking, infer
from kvserve.server.errors import InvalidArgument, NotFound
from kvserve.server.models.manager import READY
from kvserve.server.models.repository import parse_version

from .errors import Unimplemented
from .guard import Door, endpoint, read_body
from .v2_codec import HEADER_LENGTH, decode_infer, dumps, encode_infer, parse_json, split_body


def json_response(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


def _message_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def _servicer(door: Door, method: str, request: Any) -> Any:
    return await blocking(getattr(door.servicer, method), request, None)


def _version(request: Request) -> str:
    return request.path_params.get("version", "")


def routes(door: Door) -> list[BaseRoute]:
    async def server_metadata(request: Request) -> Response:
        return json_response(_message_json(await _servicer(door, "ServerMetadata", pb.ServerMetadataRequest())))

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = door.manager.ready() and not door.lifecycle.draining
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    async def model_metadata(request: Request) -> Response:
        message = await _servicer(door, "ModelMetadata", pb.ModelMetadataRequest(name=request.path_params["model"], version=_version(request)))
        data = _message_json(message)
        for tensor in data.get("inputs", []) + data.get("outputs", []):
            tensor["shape"] = [int(d) for d in tensor.get("shape", [])]
        return json_response(data)

    async def model_ready(request: Request) -> Response:
        message = await _servicer(door, "ModelReady", pb.ModelReadyRequest(name=request.path_params["model"], version=_version(request)))
        return json_response({"name": request.path_params["model"], "ready": message.ready}, 200 if message.ready else 503)

    async def model_config(request: Request) -> Response:
        message = await _servicer(door, "ModelConfig", pb.ModelConfigRequest(name=request.path_params["model"], version=_version(request)))
        config = _message_json(message.config)
        for tensor in config.get("input", []) + config.get("output", []):  # Triton's JSON has int64 dims as numbers
            tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
        return json_response(config)

    async def model_infer(request: Request) -> Response:
        body = await read_body(request, door.settings.max_message_bytes)
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        decoded = decode_infer(header, binary)
        deadline = time.monotonic() + decoded.timeout_us / 1e6 if decoded.timeout_us else None
        model, outputs = await infer(door.dataplane, request.path_params["model"], _version(request), decoded.inputs,
                                     decoded.requested, decoded.classification, deadline)
        answer, header_length = encode_infer(model.name, str(model.version), decoded.request_id, outputs, decoded.binary_outputs)
        if header_length is None:
            return Response(answer, media_type="application/json")
        return Response(answer, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_length)})

    async def repository_index(request: Request) -> Response:
        body = await read_body(request, door.settings.max_message_bytes)
        options = parse_json(body) if body.strip() else {}
        ready_only = isinstance(options, dict) and options.get("ready") is True
        rows = []
        for entry in await blocking(door.manager.entries):
            if ready_only and entry.state != READY:
                continue
            rows.append({"name": entry.name, "version": str(entry.version), "state": entry.state, "reason": entry.reason})
        return json_response(rows)

    async def repository_load(request: Request) -> Response:
        body = await read_body(request, door.settings.max_message_bytes)
        options = parse_json(body) if body.strip() else {}
        parameters = options.get("parameters") if isinstance(options, dict) else None
        parameters = parameters if isinstance(parameters, dict) else {}
        version = parse_version(str(parameters["version"])) if "version" in parameters else None
        devices = None
        if "devices" in parameters:
            if not isinstance(parameters["devices"], str):
                raise InvalidArgument('parameter "devices" must be a string such as "CPU,TF"')
            devices = [d.strip().upper() for d in parameters["devices"].split(",") if d.strip()]
        await blocking(door.manager.load, request.path_params["model"], version, devices)
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        name = request.path_params["model"]
        if not await blocking(door.manager.repository.versions, name):
            raise NotFound(door.manager.not_found_message(name))
        await blocking(door.manager.unload, name)
        return json_response({})

    async def unimplemented(request: Request) -> Response:
        raise Unimplemented(f"{request.method} {request.url.path} (statistics, shared memory, trace, logging, generate) "
                            "is not implemented by kvd")

    def route(path: str, method: str, handler: Any, methods: tuple[str, ...] = ("GET",), drains: bool = True) -> Route:
        return Route(path, endpoint(door, method, handler, drains), methods=list(methods))

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    return [
        route("/v2", "ServerMetadata", server_metadata),
        route("/v2/health/live", "ServerLive", live, drains=False),
        route("/v2/health/ready", "ServerReady", ready, drains=False),
        *[r for base in (model, versioned) for r in (
            route(base, "ModelMetadata", model_metadata),
            route(base + "/ready", "ModelReady", model_ready),
            route(base + "/config", "ModelConfig", model_config),
            route(base + "/infer", "ModelInfer", model_infer, ("POST",)),
        )],
        *[route(path, "Unimplemented", unimplemented, ("GET", "POST")) for path in (
            "/v2/models/stats", model + "/stats", versioned + "/stats", model + "/generate", model + "/generate_stream",
            "/v2/systemsharedmemory/{rest:path}", "/v2/cudasharedmemory/{rest:path}", "/v2/trace/setting",
            model + "/trace/setting", "/v2/logging")],
        route("/v2/repository/index", "RepositoryIndex", repository_index, ("POST",)),
        route("/v2/repository/models/{model}/load", "RepositoryModelLoad", repository_load, ("POST",)),
        route("/v2/repository/models/{model}/unload", "RepositoryModelUnload", repository_unload, ("POST",)),
    ]
