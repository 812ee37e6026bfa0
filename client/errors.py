"""Exceptions ``kvserve.client`` raises: one base class, one subclass per gRPC status.

Every call of ``Client`` turns grpc's ``RpcError`` (whose concrete classes, ``_InactiveRpcError`` and
``_MultiThreadedRendezvous``, are private to grpc) into one of these, so user code catches
``kvserve.client.NotFound`` rather than comparing status codes::

    from kvserve.client import Client, NotFound, KvserveError

    try:
        kv.infer("digits", x)
    except NotFound as error:
        print(error.message)          # the server's one-line message
    except KvserveError as error:
        print(error.status, error)    # e.g. "UNAVAILABLE", any other failure

``error.status`` is the gRPC status name and ``error.message`` the server's message. For code written
against grpc, every class is also a (public) ``grpc.RpcError`` with ``code()`` and ``details()``, so
``except grpc.RpcError`` keeps working. The original error is kept as ``__cause__`` for debugging.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, TypeVar

import grpc


class KvserveError(grpc.RpcError):
    """Base of every error a kvd call raises; ``status`` names the gRPC status, ``message`` is the server's text."""

    status = "UNKNOWN"

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def code(self) -> grpc.StatusCode:
        """The status as grpc's enum (what ``grpc.RpcError.code()`` gives)."""
        return grpc.StatusCode[self.status]

    def details(self) -> str:
        """The server's message (what ``grpc.RpcError.details()`` gives)."""
        return self.message

    def __str__(self) -> str:
        return f"{self.message} [{self.status}]"


class Cancelled(KvserveError):
    status = "CANCELLED"


class Unknown(KvserveError):
    status = "UNKNOWN"


class InvalidArgument(KvserveError):
    """The request was wrong (bad input shape, bad name, bad option): fix the request."""

    status = "INVALID_ARGUMENT"


class DeadlineExceeded(KvserveError):
    """The call took longer than its timeout (``Client(timeout=...)``)."""

    status = "DEADLINE_EXCEEDED"


class NotFound(KvserveError):
    """No such model or version."""

    status = "NOT_FOUND"


class AlreadyExists(KvserveError):
    status = "ALREADY_EXISTS"


class PermissionDenied(KvserveError):
    """The token's role may not do this (read vs admin)."""

    status = "PERMISSION_DENIED"


class ResourceExhausted(KvserveError):
    """kvd is at a limit (queue, uploads, message size): retry later or send less."""

    status = "RESOURCE_EXHAUSTED"


class FailedPrecondition(KvserveError):
    """The request is valid but the model's state refuses it (e.g. parity failed, not loaded, unsafe model)."""

    status = "FAILED_PRECONDITION"


class Aborted(KvserveError):
    status = "ABORTED"


class OutOfRange(KvserveError):
    status = "OUT_OF_RANGE"


class Unimplemented(KvserveError):
    status = "UNIMPLEMENTED"


class Internal(KvserveError):
    """A bug in kvd; its log has the traceback."""

    status = "INTERNAL"


class Unavailable(KvserveError):
    """kvd cannot be reached, or is shutting down."""

    status = "UNAVAILABLE"


class DataLoss(KvserveError):
    status = "DATA_LOSS"


class Unauthenticated(KvserveError):
    """No token, or a token kvd does not know."""

    status = "UNAUTHENTICATED"


class Unreachable(Unavailable):
    """kvd is not listening at the address (nothing there, unresolvable host, wrong port, TLS mismatch)."""


class InvalidAddress(Unreachable, ValueError):
    """The address given for kvd is not a gRPC target (a URL, a bad port): nothing can be reached there."""


BY_STATUS: dict[str, type[KvserveError]] = {
    cls.status: cls for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}

_UNREACHABLE_HINTS = ("connect", "dns", "resolv", "lookup", "name resolution", "no address", "handshake", "ssl", "socket closed")


def from_rpc_error(error: grpc.RpcError) -> KvserveError:
    """The kvserve exception for a grpc error (``Unreachable`` when the channel never reached a kvd)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code.name).lower().replace("_", " ")
    if code == grpc.StatusCode.UNAVAILABLE and any(hint in details.lower() for hint in _UNREACHABLE_HINTS):
        return Unreachable(details)
    return BY_STATUS.get(code.name, KvserveError)(details, code.name)


T = TypeVar("T")


def translated(function: Callable[..., T]) -> Callable[..., T]:
    """Decorator: grpc.RpcError raised by ``function`` leaves it as a KvserveError (cause kept)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    return wrapper


def translated_stream(iterator: Iterator[T]) -> Iterator[T]:
    """A server stream whose errors arrive as KvserveError."""
    try:
        yield from iterator
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
