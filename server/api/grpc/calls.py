"""``CallInterceptor``: the one interceptor every RPC passes (auth, drain, error mapping, metrics, access log).

Per call it counts the status code and times the whole call. A log line per call (method, model, version, the
v2 request ``id``, the outcome; never the tensors) is written only with ``kvd --access-log`` (probes at
DEBUG); calls that fail are always logged. One pass instead of a chain: each layer of a chain cost a wrapper
call and a context manager per RPC.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import grpc

from kvserve.proto.wire import InferRequestView
from kvserve.server.api.grpc.interceptors import rewrap, status_of
from kvserve.server.api.grpc.lenient import OWN_CODEC, lenient_behaviour, lenient_deserializer
from kvserve.server.ops import metrics
from kvserve.server.ops.auth import check_token
from kvserve.server.ops.lifecycle import DRAINING_MESSAGE, EXEMPT_PREFIXES, Lifecycle
from kvserve.server.ops.logs import event

log = logging.getLogger("kvserve.server.api.grpc.calls")

PROBES = {"ServerLive", "ServerReady", "ModelReady", "Check", "Watch"}


@dataclass
class CallRecord:
    method: str
    model: str = ""
    version: str = ""
    request_id: str = ""
    response: Any = None
    code: grpc.StatusCode = grpc.StatusCode.OK


def _describe(method: str, request: Any, known_model: Callable[[str], bool]) -> CallRecord:
    """Method name, model and version (only for models that exist, so labels stay bounded), request id."""
    record = CallRecord(method.rsplit("/", 1)[-1])
    try:
        return _fill(record, request, known_model)
    except Exception:  # noqa: BLE001 - a malformed request is the handler's to refuse, not the observer's
        return record


def _fill(record: CallRecord, request: Any, known_model: Callable[[str], bool]) -> CallRecord:
    if type(request) is InferRequestView:  # ModelInfer, every call: its three fields, no probing
        name = request.model_name
        if name and known_model(name):
            record.model = name
            version = request.model_version
            record.version = version if version.isdigit() else ""
        record.request_id = request.id
        return record
    spec = getattr(request, "model_spec", None)  # TF Serving requests name the model in a ModelSpec
    name = getattr(request, "model_name", None) or getattr(request, "name", None) or getattr(spec, "name", None)
    if isinstance(name, str) and known_model(name):
        record.model = name
        version = getattr(request, "model_version", None) or getattr(request, "version", None)
        if spec is not None and spec.WhichOneof("version_choice") == "version":
            version = str(spec.version.value)
        record.version = version if isinstance(version, str) and version.isdigit() else ""
    request_id = getattr(request, "id", "")
    record.request_id = request_id if isinstance(request_id, str) else ""
    return record


Refusal = tuple[grpc.StatusCode, str]


def call_deadline(context: grpc.aio.ServicerContext | None) -> float | None:
    """The call's gRPC deadline on ``time.monotonic()``'s clock, for the data plane (None: the client set none)."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


@dataclass
class _Call:
    """One call between ``_begin`` and ``_end``."""

    __slots__ = ("record", "started", "in_flight", "counted")
    record: CallRecord
    started: float
    in_flight: Any
    counted: bool


class CallInterceptor(grpc.aio.ServerInterceptor):
    """The one interceptor: per call it refuses (bad token, draining) before decoding the request, counts the
    call in flight for the drain, maps exceptions to statuses, and measures it (metrics; a log line per call
    only with ``access_log``; failures and refusals are always logged at INFO)."""

    def __init__(self, known_model: Callable[[str], bool], lifecycle: Lifecycle, tokens: dict[bytes, str] | None = None,
                 access_log: bool = False) -> None:
        self.known_model = known_model
        self.lifecycle = lifecycle
        self.tokens = tokens
        self.access_log = access_log
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        refusal: Refusal | None = None
        if self.tokens is not None:
            refusal = check_token(self.tokens, method, handler_call_details.invocation_metadata)
        exempt = method.startswith(EXEMPT_PREFIXES)
        if refusal is None and not exempt and self.lifecycle.draining:
            refusal = (grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        if refusal is not None:
            return rewrap(handler, self._refuse(method, refusal), request_deserializer=_raw)
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:  # built once per method, not per call
            wrapped = self._wrapped[method] = (handler, self._wrap(method, handler, not exempt))
        return wrapped[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler, counted: bool) -> grpc.RpcMethodHandler:
        behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        deserializer = handler.request_deserializer
        if method not in OWN_CODEC:  # undecodable bytes: INVALID_ARGUMENT, not gRPC's INTERNAL
            behaviour = lenient_behaviour(behaviour, method, handler.request_streaming, handler.response_streaming)
            deserializer = lenient_deserializer(deserializer)
        if inspect.isasyncgenfunction(behaviour):
            return rewrap(handler, self._streaming(method, behaviour, counted), request_deserializer=deserializer)
        return rewrap(handler, self._single(method, behaviour, counted), request_deserializer=deserializer)

    def _refuse(self, method: str, refusal: Refusal) -> Callable[..., Any]:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            record = CallRecord(method.rsplit("/", 1)[-1], code=refusal[0])
            started = time.perf_counter()
            try:
                await context.abort(*refusal)
            finally:
                self._finish(record, context, started)

        return refuse

    def _single(self, method: str, behaviour: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        """Unary responses, and streams written with ``context.write`` (health's Watch)."""

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, request, counted)
            try:
                response = behaviour(request, context)
                if inspect.isawaitable(response):
                    response = await response
                call.record.response = response
                return response
            except BaseException as error:  # noqa: BLE001 - the mapping point
                await _fail(call.record, context, method, error)
            finally:
                self._end(call, context)

        return run

    def _streaming(self, method: str, behaviour: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, request, counted)
            try:
                async for item in behaviour(request, context):
                    yield item
            except BaseException as error:  # noqa: BLE001 - the mapping point
                await _fail(call.record, context, method, error)
            finally:
                self._end(call, context)

        return run

    def _begin(self, method: str, request: Any, counted: bool) -> "_Call":
        """What every call does first, unary or streaming: describe it, count it in flight (and for the drain)."""
        record = _describe(method, request, self.known_model)
        in_flight = _child(metrics.IN_FLIGHT, record.method, record.model)
        in_flight.inc()
        if counted:
            self.lifecycle.enter()
        return _Call(record, time.perf_counter(), in_flight, counted)

    def _end(self, call: "_Call", context: grpc.aio.ServicerContext) -> None:
        call.in_flight.dec()
        if call.counted:
            self.lifecycle.leave()
        self._finish(call.record, context, call.started)

    def _finish(self, record: CallRecord, context: grpc.aio.ServicerContext, started: float) -> None:
        seconds = time.perf_counter() - started
        served = getattr(record.response, "model_version", "")
        version = served if isinstance(served, str) and served else record.version
        code = record.code
        _child(metrics.REQUESTS, record.method, record.model, version, code.name).inc()
        _child(metrics.REQUEST_SECONDS, record.method, record.model, version).observe(seconds)
        if code == grpc.StatusCode.OK:
            if not self.access_log:
                return
            level = logging.DEBUG if record.method in PROBES else logging.INFO
        else:
            level = logging.INFO
        if log.isEnabledFor(level):
            event(log, level, "rpc", method=record.method, model=record.model, version=version, id=record.request_id,
                  code=code.name, ms=round(seconds * 1000, 2), peer=context.peer())


async def _fail(record: CallRecord, context: grpc.aio.ServicerContext, method: str, error: BaseException) -> None:
    """Record the outcome of a call that raised, and turn the exception into its status."""
    if isinstance(error, grpc.aio.AbortError):  # the servicer aborted with its own status
        record.code = _context_code(context) or grpc.StatusCode.UNKNOWN
        raise error
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)) or context.cancelled():
        record.code = grpc.StatusCode.CANCELLED
        raise error
    if not isinstance(error, Exception):
        raise error
    record.code, message = status_of(method, error)
    await context.abort(record.code, message)


def _context_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - older grpc
        return None
    return code if isinstance(code, grpc.StatusCode) else None


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: labels are bounded (methods, known models, versions, codes)."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def _raw(data: bytes) -> bytes:
    """A refused call's request is never decoded (None would mean "undecodable" to gRPC)."""
    return data
