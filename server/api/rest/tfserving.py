"""TF Serving REST routes: ``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` (status), ``.../metadata``, and
``POST .../{m}[...]:predict`` (row or columnar), answered and failed (``{"error": ...}``) as TF Serving does."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kvserve.server.api.infer_adapter import blocking, infer
from kvserve.server.api.tfserving_models import (PREDICT_METHOD, SIGNATURE, check_signature, signature, statuses,
                                                 version_text)
from kvserve.proto.echo import short
from kvserve.server.errors import InvalidArgument, NotFound
from kvserve.server.models.repository import parse_version

from .errors import Unimplemented
from .guard import Door, endpoint, read_body
from .tfserving_codec import decode_predict, encode_predict
from .v2 import json_response
from .v2_codec import parse_json

# name, then optional /versions/N or /labels/L, then /metadata or :verb
PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?(?P<tail>/metadata|:[a-z]+)?")
ERROR_CODES = {0: "OK", 2: "UNKNOWN"}


def _parse(path: str) -> tuple[str, int | None, str, str]:
    match = PATH.fullmatch(path)
    if match is None:
        raise NotFound(f"no route /v1/models/{path}; use /v1/models/NAME[/versions/N][/metadata|:predict]")
    version = match["version"]
    if version is not None and not version.isdigit():
        raise InvalidArgument(f"version must be a number, got '{short(version)}'; use /labels/{short(version)} for a label")
    number = None if not version or version.strip("0") == "" else parse_version(version)  # 0: the default, as OVMS
    return match["name"], number, match["label"] or "", match["tail"] or ""


def _tensor_info(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False},
            "name": name}


def routes(door: Door) -> list[BaseRoute]:
    manager = door.manager

    async def get(request: Request) -> Response:
        name, number, label, tail = _parse(request.path_params["path"])
        request.state.model, request.state.version = name, str(number or "")
        if tail not in ("", "/metadata"):
            raise NotFound(f"GET {request.url.path}: use GET .../metadata, or POST ...{tail}")
        if tail == "":
            if label:
                text = version_text(manager, name, None, label)
                number = int(text) if text else (await blocking(manager.get, name)).version
            rows = await blocking(statuses, manager, name, number)
            return json_response({"model_version_status": [
                {"version": str(r.version), "state": r.state, "status": {"error_code": ERROR_CODES.get(r.error_code, "UNKNOWN"),
                                                                          "error_message": r.error_message}} for r in rows]})
        model = await blocking(manager.get, name, version_text(manager, name, number, label))
        described = signature(model)
        definition = {
            "inputs": {n: _tensor_info(n, d, s) for n, d, s in described["inputs"]},
            "outputs": {n: _tensor_info(n, d, s) for n, d, s in described["outputs"]},
            "method_name": PREDICT_METHOD,
        }
        return json_response({"model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
                              "metadata": {"signature_def": {"signature_def": {SIGNATURE: definition}}}})

    async def post(request: Request) -> Response:
        name, number, label, tail = _parse(request.path_params["path"])
        request.state.model, request.state.version = name, str(number or "")
        if tail in (":classify", ":regress"):
            raise Unimplemented(f"{tail[1:]} is not implemented by kvd; use :predict")
        if tail != ":predict":
            raise NotFound(f"POST {request.url.path}: use POST /v1/models/NAME[/versions/N]:predict")
        body = parse_json(await read_body(request, door.settings.max_message_bytes))
        if isinstance(body, dict):
            signature_name = body.get("signature_name", "")
            check_signature(signature_name if isinstance(signature_name, str) else str(signature_name))
        model = await blocking(manager.get, name, version_text(manager, name, number, label))
        inputs, row_format = decode_predict(body, model.inputs)
        model, outputs = await infer(door.dataplane, name, str(model.version), inputs)
        return json_response(encode_predict(outputs, row_format))

    return [
        Route("/v1/models/{path:path}", endpoint(door, "GetModelStatus", get), methods=["GET"]),
        Route("/v1/models/{path:path}", endpoint(door, "Predict", post), methods=["POST"]),
    ]
