"""Bearer tokens with two roles, checked in one interceptor before a request is even decoded.

Token file (``kvd --auth-token-file``): one ``ROLE TOKEN`` per line, ROLE ``read`` or ``admin``; blank lines and
``#`` comments are ignored; tokens are at least 16 characters (``openssl rand -hex 32`` makes a good one).
Clients send ``authorization: Bearer TOKEN`` metadata. ``read`` may infer and look; ``admin`` may also change
the repository. A method not in ``ROLES`` needs ``admin``, so a new RPC is never open by accident.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

import grpc

from kvserve.server.api.grpc.interceptors import refusing

log = logging.getLogger("kvserve.server.ops.auth")

READ = "read"
ADMIN = "admin"
MIN_TOKEN_CHARS = 16

_V2 = "/inference.GRPCInferenceService/"
_KV = "/kvserve.v1.KvServe/"
ROLES: dict[str, str] = {
    **{_V2 + m: READ for m in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
                               "ModelInfer", "ModelStreamInfer", "ModelStatistics", "RepositoryIndex")},
    **{_V2 + m: ADMIN for m in ("RepositoryModelLoad", "RepositoryModelUnload")},
    **{_KV + m: READ for m in ("Describe", "Devices", "Plugins")},
    **{_KV + m: ADMIN for m in ("Upload", "Delete", "Benchmark")},
    **{"/tensorflow.serving.PredictionService/" + m: READ for m in ("Predict", "GetModelMetadata", "Classify", "Regress", "MultiInference")},
    "/tensorflow.serving.ModelService/GetModelStatus": READ,
    "/grpc.health.v1.Health/Check": READ,
    "/grpc.health.v1.Health/Watch": READ,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": READ,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": READ,
}
GRANTS = {READ: {READ}, ADMIN: {READ, ADMIN}}


def role_needed(method: str) -> str:
    return ROLES.get(method, ADMIN)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_tokens(path: Path) -> dict[bytes, str]:
    """Parse a token file into {sha256(token): role}; ValueError with the line number on anything odd."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"cannot read --auth-token-file {path}: {error.strerror or error}") from None
    if Path(path).stat().st_mode & 0o077:
        log.warning("token file %s is readable by other users; chmod 600 it", path)
    tokens: dict[bytes, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in GRANTS:
            raise ValueError(f"{path}:{number}: expected 'ROLE TOKEN' with ROLE read or admin")
        if len(parts[1]) < MIN_TOKEN_CHARS:
            raise ValueError(f"{path}:{number}: token shorter than {MIN_TOKEN_CHARS} characters; make one with `openssl rand -hex 32`")
        tokens[_digest(parts[1])] = parts[0]
    if not tokens:
        raise ValueError(f"{path}: no tokens; add lines like 'admin TOKEN' and 'read TOKEN'")
    return tokens


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED without a valid token; PERMISSION_DENIED when the token's role does not grant the method."""

    def __init__(self, tokens: dict[bytes, str]) -> None:
        self.tokens = tokens

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "kvd requires a token: pass --token or set KVSERVE_TOKEN (sent as 'authorization: Bearer TOKEN')")
        role = self.tokens.get(_digest(token))
        if role is None:
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, "the token is not valid for this kvd; check --token / KVSERVE_TOKEN")
        needed = role_needed(method)
        if needed not in GRANTS[role]:
            return refusing(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"{method.rsplit('/', 1)[-1]} needs an {needed} token; this token has the {role} role")
        return handler
