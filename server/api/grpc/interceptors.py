"""Handler plumbing for the aio server and the one place where exceptions become gRPC statuses.

``rewrap`` builds a handler of the same kind around a new behaviour with gRPC's public constructors (no
private ``_replace``); ``status_of`` maps kvserve's exceptions (and protocol TensorErrors) to a status and a
message, logging unexpected ones with their traceback (which never reaches the client).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import grpc

from kvserve.proto.tensors import TensorError
from kvserve.server.errors import KvError

log = logging.getLogger("kvserve.server")

KINDS: tuple[tuple[str, Callable[..., grpc.RpcMethodHandler]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    return next(kind for kind, _ in KINDS if getattr(handler, kind) is not None)


def rewrap(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any],
           request_deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and serializers that runs ``behaviour`` instead."""
    kind = kind_of(handler)
    make = dict(KINDS)[kind]
    return make(behaviour, request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)


def status_of(method: str, error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and one-line message a client gets for ``error`` raised by ``method``."""
    if isinstance(error, KvError):
        log.info("%s -> %s: %s", method, error.code.name, error)
        return error.code, str(error)
    if isinstance(error, NotImplementedError):  # the generated base class for RPCs kvserve does not offer
        return grpc.StatusCode.UNIMPLEMENTED, f"{method.rsplit('/', 1)[-1]} is not implemented by kvserve"
    if isinstance(error, TensorError):
        log.info("%s -> INVALID_ARGUMENT: %s", method, error)
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    log.error("%s failed unexpectedly", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error in {method.rsplit('/', 1)[-1]}; the kvd log has the details"
