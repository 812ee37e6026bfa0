"""One exception hierarchy for every user-facing failure; each class carries its gRPC status code.

The error interceptor (``kvserve.server.api.grpc.interceptors``) turns these into statuses; anything else becomes INTERNAL
with a generic message while the traceback goes to the log.
"""

from __future__ import annotations

import grpc

from kvserve.proto.echo import bounded


class KvError(Exception):
    """Base class: ``str(error)`` is shown to the client as is, so say what was wrong and what to do.

    The message is bounded and escaped (``kvserve.proto.echo.bounded``): it echoes names and values the client
    sent, and a 20,000-character name must not overflow gRPC's metadata limit or forge log lines.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(bounded(str(message)), *args)


class InvalidArgument(KvError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(KvError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(KvError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(KvError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(KvError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(KvError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KvError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(KvError):
    """An internal failure whose message is still safe and useful to show (e.g. a converter crash)."""

    code = grpc.StatusCode.INTERNAL


class Cancelled(KvError):
    """The client went away or its deadline passed; the work was dropped (nobody is waiting for the answer)."""

    code = grpc.StatusCode.CANCELLED
