"""``CallObserver``: the one interceptor that measures and logs every RPC.

Per call it counts the status code, times the whole call, tracks calls in flight, and writes one log line with
the method, model, version, the v2 request ``id`` and the outcome (never the tensors). Probes (liveness,
readiness, health checks) are logged at DEBUG so they do not drown the rest.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import grpc

from kvserve.server.ops import metrics
from kvserve.server.api.grpc.interceptors import scoped
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


def _describe(method: str, request: Any, known_model: Callable[[str], bool]) -> CallRecord:
    """Method name, model and version (only for models that exist, so labels stay bounded), request id."""
    record = CallRecord(method.rsplit("/", 1)[-1])
    try:
        return _fill(record, request, known_model)
    except Exception:  # noqa: BLE001 - a malformed request is the handler's to refuse, not the observer's
        return record


def _fill(record: CallRecord, request: Any, known_model: Callable[[str], bool]) -> CallRecord:
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


def _code(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, GeneratorExit) or not context.is_active():
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


class CallObserver(grpc.ServerInterceptor):
    """Outermost interceptor: sees every call, including those refused by auth or while draining."""

    def __init__(self, known_model: Callable[[str], bool]) -> None:
        self.known_model = known_model

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return scoped(handler, handler_call_details.method, self._observe)

    @contextmanager
    def _observe(self, method: str, request: Any, context: grpc.ServicerContext) -> Iterator[CallRecord]:
        record = _describe(method, request, self.known_model)
        started = time.perf_counter()
        in_flight = metrics.IN_FLIGHT.labels(record.method, record.model)
        in_flight.inc()
        error: BaseException | None = None
        try:
            yield record
        except BaseException as raised:
            error = raised
            raise
        finally:
            in_flight.dec()
            seconds = time.perf_counter() - started
            served = getattr(record.response, "model_version", "")
            version = served if isinstance(served, str) and served else record.version
            code = _code(context, error)
            metrics.REQUESTS.labels(record.method, record.model, version, code.name).inc()
            metrics.REQUEST_SECONDS.labels(record.method, record.model, version).observe(seconds)
            level = logging.DEBUG if record.method in PROBES and code == grpc.StatusCode.OK else logging.INFO
            event(log, level, "rpc", method=record.method, model=record.model, version=version, id=record.request_id,
                  code=code.name, ms=round(seconds * 1000, 2), peer=context.peer())
