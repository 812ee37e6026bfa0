"""TLS on the gRPC port, and the rule that kvd does not listen beyond loopback without protection.

``--tls-cert``/``--tls-key`` (PEM) turn TLS on; ``--tls-client-ca`` also requires client certificates signed by
that CA (mTLS). A non-loopback ``--address`` needs TLS with client certificates or TLS plus ``--auth-token-file``, or an
explicit ``--insecure``; a non-loopback ``--metrics-address`` needs ``--insecure`` (docs/security.md).
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
    """Off loopback, kvd listens only when callers are authenticated over an encrypted channel: TLS with client
    certificates (mTLS), or TLS plus bearer tokens. TLS alone lets anyone upload and delete; tokens over
    plaintext can be sniffed and replayed. Anything less needs an explicit ``--insecure``. The metrics endpoint
    (plain HTTP, no authentication) must stay on loopback unless ``--insecure`` says otherwise."""
    if settings.insecure:
        return
    tls = bool(settings.tls_cert)
    tokens = settings.auth_token_file is not None
    for address in (a for a in (settings.address, getattr(settings, "http_address", "")) if a and not is_loopback(a)):
        if tokens and not tls:
            raise ValueError(
                f"refusing to listen on {address} with bearer tokens over plaintext: anyone on the path could read "
                "and replay them. Add --tls-cert/--tls-key, or pass --insecure if the network is trusted")
        if not (tls and (settings.tls_client_ca or tokens)):
            what = "TLS but no client authentication" if tls else "without TLS or tokens"
            raise ValueError(
                f"refusing to listen on {address} {what}: anyone who can reach it could upload and run models. "
                "Pass --tls-cert/--tls-key with --tls-client-ca (mTLS) or --auth-token-file, or --insecure if the network is trusted")
    metrics = getattr(settings, "metrics_address", "")
    if metrics and not is_loopback(metrics):
        raise ValueError(
            f"refusing to serve metrics on {metrics}: the metrics endpoint has no TLS or tokens. Bind it to loopback "
            "(--metrics-address 127.0.0.1:8502) and scrape through a proxy, or pass --insecure if the network is trusted")
