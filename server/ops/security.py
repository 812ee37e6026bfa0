"""TLS on the gRPC port, and the rule that kvd does not listen beyond loopback without protection.

``--tls-cert``/``--tls-key`` (PEM) turn TLS on; ``--tls-client-ca`` also requires client certificates signed by
that CA (mTLS). A non-loopback ``--address`` needs TLS or ``--auth-token-file``, or an explicit ``--insecure``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from kvserve.server.settings import Settings


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {flag} {path}: {error.strerror or error}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext."""
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key (PEM files)")
    pair = (_read(settings.tls_key, "--tls-key"), _read(settings.tls_cert, "--tls-cert"))
    ca = _read(settings.tls_client_ca, "--tls-client-ca") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") or address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse a plaintext, tokenless listener reachable from other hosts unless --insecure says so."""
    protected = bool(settings.tls_cert) or settings.auth_token_file is not None
    exposed = [a for a in (settings.address, settings.http_address) if a and not is_loopback(a)]
    if not protected and not settings.insecure and exposed:
        raise ValueError(
            f"refusing to listen on {exposed[0]} without TLS or tokens: anyone who can reach it could upload "
            "and run models. Pass --tls-cert/--tls-key and/or --auth-token-file, or --insecure if the network is trusted"
        )
