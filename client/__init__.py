"""kvserve.client: the Python client and the ``kvctl`` CLI. Imports neither TensorFlow nor OpenVINO.

Errors are ``KvserveError`` subclasses, one per gRPC status (see ``kvserve.client.errors``).
"""

from kvserve.client.client import Client, UploadProgress
from kvserve.client.errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidAddress, InvalidArgument,
                                   KvserveError, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable,
                                   Unimplemented, Unreachable)

__all__ = ["Client", "UploadProgress", "KvserveError", "AlreadyExists", "DeadlineExceeded", "FailedPrecondition", "Internal",
           "InvalidAddress", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted", "Unauthenticated",
           "Unavailable", "Unimplemented", "Unreachable"]
