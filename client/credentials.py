"""How the client reaches a protected kvd: TLS (optionally with a client certificate) and a bearer token.

Everything also comes from the environment, so scripts need no flags: ``KVSERVE_TOKEN``, ``KVSERVE_CA``
(PEM CA that signed kvd's certificate; turns TLS on), ``KVSERVE_CERT`` and ``KVSERVE_KEY`` (client certificate
and key, for mTLS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def resolve(cls, token: str | None = None, ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                key: str | os.PathLike[str] | None = None) -> "Credentials":
        """Arguments first, then the KVSERVE_* environment."""
        env = os.environ.get

        def path(value: Any, name: str) -> Path | None:
            value = value or env(name)
            return Path(value) if value else None

        return cls(token or env("KVSERVE_TOKEN") or None, path(ca, "KVSERVE_CA"), path(cert, "KVSERVE_CERT"), path(key, "KVSERVE_KEY"))

    @property
    def tls(self) -> bool:
        return bool(self.ca or self.cert)

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A channel to ``address``: TLS when a CA or client certificate is given, the token on every call."""
        if self.tls:
            if bool(self.cert) != bool(self.key):
                raise ValueError("a client certificate needs both --cert and --key (KVSERVE_CERT, KVSERVE_KEY)")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes() if self.ca else None,
                private_key=self.key.read_bytes() if self.key else None,
                certificate_chain=self.cert.read_bytes() if self.cert else None,
            )
            channel = grpc.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _TokenInterceptor(self.token))
        return channel


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to every call (works over TLS and, on loopback, plaintext)."""

    def __init__(self, token: str) -> None:
        self.metadata = ("authorization", f"Bearer {token}")

    def _add(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self.metadata]
        return continuation(details._replace(metadata=metadata), request)

    intercept_unary_unary = intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = _add
