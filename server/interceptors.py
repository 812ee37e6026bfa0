"""The one place where exceptions become gRPC statuses, for unary and streaming handlers alike."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import grpc

from kvserve.proto.tensors import TensorError
from kvserve.server.errors import KvError

log = logging.getLogger("kvserve.server")


def _abort(context: grpc.ServicerContext, method: str, error: BaseException) -> None:
    if isinstance(error, KvError):
        log.info("%s -> %s: %s", method, error.code.name, error)
        context.abort(error.code, str(error))
    if isinstance(error, NotImplementedError):  # the generated base class for RPCs kvserve does not offer
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method.rsplit('/', 1)[-1]} is not implemented by kvserve")
    if isinstance(error, TensorError):
        log.info("%s -> INVALID_ARGUMENT: %s", method, error)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    log.exception("%s failed unexpectedly", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.rsplit('/', 1)[-1]}; the kvd log has the details")


def _is_abort(error: BaseException, context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after setting the status; let it through untouched.
    return type(error) is Exception and context.code() is not None


def _wrap_unary(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001 - this is the mapping point
            if _is_abort(error, context):
                raise
            _abort(context, method, error)

    return handler


def _wrap_stream(method: str, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001
            if _is_abort(error, context):
                raise
            _abort(context, method, error)

    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps KvError (and protocol TensorError) to their status codes; anything else to INTERNAL."""

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(method, handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(method, handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(method, handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap_stream(method, handler.stream_stream))
        return handler
