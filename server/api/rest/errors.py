"""Errors on the HTTP door: ``{"error": "..."}`` with Triton's status mapping, from the one exception hierarchy."""

from __future__ import annotations

import grpc
import orjson
from starlette.responses import Response

from kvserve.proto.tensors import TensorError
from kvserve.server.errors import KvError

# Triton's mapping (NOT_FOUND 404, UNAVAILABLE 503, UNIMPLEMENTED 501, INTERNAL 500, everything else 400), plus
# the HTTP statuses a client library retries or re-authenticates on, and 504 for a request's timeout.
STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,  # the request's own timeout passed while it waited for the model
}


class HttpError(KvError):
    """A malformed HTTP request (bad JSON, sizes that do not add up): 400 unless ``code`` says otherwise."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unimplemented(KvError):
    code = grpc.StatusCode.UNIMPLEMENTED


def http_status(code: grpc.StatusCode) -> int:
    return STATUS.get(code, 400)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json", headers=headers)


def code_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC status an exception stands for (as the gRPC door would answer), INTERNAL when unexpected."""
    if isinstance(error, KvError):
        return error.code
    if isinstance(error, TensorError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL
