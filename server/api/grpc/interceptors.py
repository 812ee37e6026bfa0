"""Interceptor plumbing and the one place where exceptions become gRPC statuses.

``scoped`` runs any kind of RPC handler (unary or streaming, either side) inside a context manager, so each
interceptor is one ``with`` block instead of four wrappers; ``refusing`` answers a call with a status before
its request is even decoded (auth, draining).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator

import grpc

from kvserve.proto.tensors import TensorError
from kvserve.server.errors import KvError

log = logging.getLogger("kvserve.server")

Scope = Callable[[str, Any, grpc.ServicerContext], AbstractContextManager[Any]]


def _abort(context: grpc.ServicerContext, method: str, error: BaseException) -> None:
    if isinstance(error, KvError):
        log.info("%s -> %s: %s", method, error.code.name, error)
        context.abort(error.code, str(error))
    if isinstance(error, NotImplementedError):  # the generated base class for RPCs kvserve does not offer
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method.rsplit('/', 1)[-1]} is not implemented by kvserve")
    if isinstance(error, TensorError):
        log.info("%s -> INVALID_ARGUMENT: %s", method, error)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if not context.is_active():  # the client went away (its request stream broke): nobody to tell
        log.info("%s: the client went away (%s)", method, type(error).__name__)
        context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
    log.exception("%s failed unexpectedly", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.rsplit('/', 1)[-1]}; the kvd log has the details")


def _is_abort(error: BaseException, context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after setting the status; let it through untouched.
    return type(error) is Exception and context.code() is not None


def scoped(handler: grpc.RpcMethodHandler, method: str, scope: Scope) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour run inside ``scope(method, request, context)``.

    For unary responses the response is stored on what the scope yields (``.response``) when it has that slot.
    """

    def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with scope(method, request, context) as call:
                response = behaviour(request, context)
                if hasattr(call, "response"):
                    call.response = response
                return response

        return run

    def stream(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with scope(method, request, context):
                yield from behaviour(request, context)

        return run

    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=stream(handler.unary_stream))
    if handler.stream_stream:
        return handler._replace(stream_stream=stream(handler.stream_stream))
    return handler


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers ``code`` at once, without decoding the request."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    return handler._replace(request_deserializer=lambda data: data, **{kind: refuse})  # None would mean "undecodable"


@contextmanager
def _mapped(method: str, request: Any, context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except Exception as error:  # noqa: BLE001 - this is the mapping point
        if _is_abort(error, context):
            raise
        _abort(context, method, error)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps KvError (and protocol TensorError) to their status codes; anything else to INTERNAL."""

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return scoped(handler, handler_call_details.method, _mapped)
