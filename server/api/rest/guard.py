"""What every HTTP request goes through, as on the gRPC side: tokens and roles, drain, the concurrency limit,
the body size limit, one metrics sample and one log line, and exceptions mapped to ``{"error": ...}``.

``AuthMiddleware`` wraps the whole app (so routes mounted by others, e.g. the web page, are covered too);
``endpoint`` wraps each API handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kvserve.proto.echo import short
from kvserve.server.errors import Cancelled, Internal, ResourceExhausted, Unavailable
from kvserve.server.ops import metrics
from kvserve.server.ops.auth import ADMIN, GRANTS, PUBLIC, READ, _bearer, _digest
from kvserve.server.ops.lifecycle import Lifecycle
from kvserve.server.ops.logs import event
from kvserve.server.settings import Settings

from .errors import HttpError, code_of, error_response, http_status

log = logging.getLogger("kvserve.server.api.rest")

PROBES = {"ServerLive", "ServerReady", "ModelReady"}
BODY_IDLE_S = 5.0  # a body that stops arriving mid-way (Content-Length larger than what is sent) gets a 400
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Door:
    """Everything the HTTP routes need from the daemon."""

    manager: Any
    dataplane: Any
    settings: Settings
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    tokens: dict[bytes, str] | None = None
    servicer: Any = None  # the v2 gRPC servicer: metadata, config and repository answers are built once, there
    active: int = 0


HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
WEB_SHELL = "/ui/static/"


def role_for(method: str, path: str) -> str:
    """Public for the health probes (Kubernetes cannot send tokens) and the web page's shell (static files, no
    data: it asks the user for a token and sends it with every data call); admin for what changes the repository
    (load, unload); read for everything else."""
    if method in ("GET", "HEAD") and (path.rstrip("/") in HEALTH_PATHS or path == "/" or path.startswith(WEB_SHELL)):
        return PUBLIC
    if method == "POST" and path.startswith("/v2/repository/models/") and path.rstrip("/").endswith(("/load", "/unload")):
        return ADMIN
    return READ


class AuthMiddleware:
    """401 without a valid bearer token, 403 when its role does not grant the route (as AuthInterceptor)."""

    def __init__(self, app: ASGIApp, tokens: dict[bytes, str] | None) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.tokens is None or role_for(scope["method"], scope["path"]) == PUBLIC:
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
        token = _bearer(headers)
        message, status = "", 200
        if token is None:
            message, status = "kvd requires a token: send the header 'Authorization: Bearer TOKEN'", 401
        elif (role := self.tokens.get(_digest(token))) is None:
            message, status = "the token is not valid for this kvd; check the 'Authorization: Bearer TOKEN' header", 401
        elif (needed := role_for(scope["method"], scope["path"])) not in GRANTS[role]:
            message, status = f"{scope['method']} {scope['path']} needs an {needed} token; this token has the {role} role", 403
        if status != 200:
            metrics.REQUESTS.labels("HTTP", "", "", "UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED").inc()
            headers_out = {"WWW-Authenticate": 'Bearer realm="kvd"'} if status == 401 else None
            await error_response(message, status, headers_out)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused early (400) when its declared or actual size passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(f"Content-Length must be a byte count, got {declared[:40]!r}")
        if int(declared) > limit:
            raise HttpError(f"the request body of {int(declared)} bytes exceeds kvd's limit of {limit} bytes "
                            "(kvd --max-message-mb); send fewer or smaller tensors")
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), BODY_IDLE_S)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise HttpError(f"the request body stopped arriving after {size} bytes"
                            f"{f' of the {declared} its Content-Length declares' if declared else ''}; send the whole body") from None
        except ClientDisconnect:
            raise Cancelled("the client closed the connection before sending the whole body") from None
        size += len(chunk)
        if size > limit:
            raise HttpError(f"the request body exceeds kvd's limit of {limit} bytes (kvd --max-message-mb)")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    return body if encoding in ("", "identity") else _decompress(body, encoding, limit)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient's request_compression_algorithm), never past ``limit``."""
    if encoding not in ("gzip", "deflate"):
        raise HttpError(f"Content-Encoding '{encoding[:20]}' is not supported; send identity, gzip or deflate")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise HttpError(f"the {encoding} body does not decompress ({error})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise HttpError(f"the decompressed body exceeds kvd's limit of {limit} bytes (kvd --max-message-mb)")
    return data


def _labels(door: Door, model: object, version: object) -> tuple[str, str]:
    """Metric labels: only models that exist and numeric versions, so label sets stay bounded."""
    name = model if isinstance(model, str) and door.manager.has(model) else ""
    return name, version if name and isinstance(version, str) and version.isdigit() else ""


def endpoint(door: Door, method: str, handler: Handler, drains: bool = True) -> Handler:
    """Wrap a route: drain and concurrency checks, the call counted for graceful shutdown, metrics, a log line,
    and any exception turned into ``{"error": ...}`` (unexpected ones as 500, traceback in the log only)."""

    async def run(request: Request) -> Response:
        started = time.perf_counter()
        model, version = _labels(door, request.path_params.get("model"), request.path_params.get("version"))
        metrics.IN_FLIGHT.labels(method, model).inc()
        door.active += 1
        code_name = "OK"
        try:
            if drains and door.lifecycle.draining:
                raise Unavailable("kvd is shutting down; retry on another instance or after it restarts")
            if door.active > door.settings.max_concurrent_rpcs:
                raise ResourceExhausted(f"kvd is handling {door.settings.max_concurrent_rpcs} calls already "
                                        "(--max-concurrent-rpcs); retry with back-off")
            with door.lifecycle.call():
                response = await handler(request)
            if response.status_code >= 400:
                code_name = "UNAVAILABLE" if response.status_code == 503 else "FAILED_PRECONDITION"
            return response
        except Exception as error:  # noqa: BLE001 - every failure becomes one JSON error line
            code = code_of(error)
            code_name = code.name
            if code.name == "INTERNAL" and not isinstance(error, Internal):
                log.exception("%s %s failed unexpectedly", short(request.method, 16), short(request.url.path, 200))
                message = f"internal error in {method}; the kvd log has the details"
            else:
                message = str(error)
            return error_response(message, http_status(code))
        finally:
            door.active -= 1
            metrics.IN_FLIGHT.labels(method, model).dec()
            if not model and hasattr(request.state, "model"):  # routes that parse the name themselves (TF Serving)
                model, version = _labels(door, request.state.model, getattr(request.state, "version", ""))
            seconds = time.perf_counter() - started
            metrics.REQUESTS.labels(method, model, version, code_name).inc()
            metrics.REQUEST_SECONDS.labels(method, model, version).observe(seconds)
            level = logging.DEBUG if method in PROBES and code_name == "OK" else logging.INFO
            event(log, level, "http", method=method, path=request.url.path, model=model, version=version, code=code_name,
                  ms=round(seconds * 1000, 2), peer=request.client.host if request.client else "")

    return run
