"""TLS, mTLS and bearer tokens through kvd, kvctl and the Python client; the loopback-only default; role table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from opsutil import ADMIN_TOKEN, READ_TOKEN

from kvserve.server.ops.auth import ADMIN, PUBLIC, READ, load_tokens, role_needed
from kvserve.server.ops.security import check_exposure, is_loopback
from kvserve.server.settings import Settings

X = np.zeros((2, 8, 8, 1), np.float32)
KVCTL = [sys.executable, "-m", "kvserve.client.cli"]


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_role_table_defaults_to_admin():
    assert role_needed("/inference.GRPCInferenceService/ModelInfer") == READ
    assert role_needed("/grpc.health.v1.Health/Check") == PUBLIC  # probes cannot send tokens
    assert role_needed("/inference.GRPCInferenceService/ServerReady") == PUBLIC
    assert role_needed("/inference.GRPCInferenceService/ModelReady") == READ
    assert role_needed("/kvserve.v1.KvServe/Devices") == READ
    for admin in ("Upload", "Delete", "Benchmark", "SomethingNew"):
        assert role_needed(f"/kvserve.v1.KvServe/{admin}") == ADMIN
    assert role_needed("/inference.GRPCInferenceService/RepositoryModelLoad") == ADMIN


@pytest.mark.parametrize("text, message", [
    ("admin short", "shorter than 16"), ("root " + "x" * 20, "ROLE read or admin"), ("admin", "ROLE TOKEN"), ("# nothing\n", "no tokens"),
])
def test_bad_token_files_are_refused(tmp_path, text, message):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_tokens(path)


def test_non_loopback_needs_protection_or_insecure():
    assert is_loopback("127.0.0.1:8500") and is_loopback("[::1]:8500") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:8500") and not is_loopback("[::]:8500")
    with pytest.raises(ValueError, match="--insecure"):
        check_exposure(Settings(address="0.0.0.0:8500"))
    check_exposure(Settings(address="0.0.0.0:8500", insecure=True))
    check_exposure(Settings(address="0.0.0.0:8500", tls_cert=Path("c"), tls_key=Path("k"), auth_token_file=Path("t")))
    check_exposure(Settings(address="0.0.0.0:8500", tls_cert=Path("c"), tls_key=Path("k"), tls_client_ca=Path("ca")))
    check_exposure(Settings(address="127.0.0.1:8500", auth_token_file=Path("t")))  # tokens over loopback stay fine


def test_weak_exposure_is_refused_off_loopback():
    """Issue 14: TLS without client authentication let anyone upload; tokens over plaintext can be replayed;
    the metrics endpoint (no TLS, no tokens) was never checked."""
    with pytest.raises(ValueError, match="TLS but no client authentication"):
        check_exposure(Settings(address="0.0.0.0:8500", tls_cert=Path("c"), tls_key=Path("k")))
    with pytest.raises(ValueError, match="bearer tokens over plaintext"):
        check_exposure(Settings(address="0.0.0.0:8500", auth_token_file=Path("t")))
    with pytest.raises(ValueError, match="refusing to serve metrics on 0.0.0.0:8502"):
        check_exposure(Settings(metrics_address="0.0.0.0:8502"))
    check_exposure(Settings(metrics_address="0.0.0.0:8502", insecure=True))


def test_kvd_refuses_to_listen_openly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kvserve.server.main", "--http-address", "", "--repository", str(tmp_path / "r"),
                             "--address", "0.0.0.0:0", "--metrics-address", ""], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS or tokens" in result.stderr


def test_tokens_and_roles(kvd_factory, digits_repo, tokens):
    kvd = kvd_factory(digits_repo, "--auth-token-file", str(tokens), client_options={"token": READ_TOKEN})
    with kvd.client(token=None) as anonymous:
        code, message = _code(anonymous.list_models)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "KVSERVE_TOKEN" in message
        assert anonymous.live() and anonymous.ready()  # probes need no token (docs/security.md)
        code, _ = _code(lambda: anonymous.model_ready("digits"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with kvd.client(token="wrong-" + "c" * 30) as wrong:
        code, message = _code(lambda: wrong.infer("digits", {"image": X}))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in message
    with kvd.client() as reader:
        assert reader.infer("digits", X)["probabilities"].shape == (2, 10)
        assert reader.list_models() and reader.devices() and reader.describe("digits")["version"] == "1"
        for admin_call in (lambda: reader.delete("digits"), lambda: reader.load("digits"), lambda: reader.unload("digits"),
                           lambda: reader.upload(digits_repo / "digits" / "1" / "manifest.json", name="x")):
            code, message = _code(admin_call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "needs an admin token; this token has the read role" in message
    with kvd.client(token=ADMIN_TOKEN) as admin:
        admin.unload("digits")
        admin.load("digits")
        assert admin.model_ready("digits")
    env = {**os.environ, "KVSERVE_TOKEN": READ_TOKEN}
    result = subprocess.run([*KVCTL, "--server", kvd.address, "delete", "digits", "--yes"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "PERMISSION_DENIED" in result.stderr
    result = subprocess.run([*KVCTL, "--server", kvd.address, "--token", ADMIN_TOKEN, "list", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and '"digits"' in result.stdout


def test_tls_with_token(kvd_factory, digits_repo, tokens, certs):
    kvd = kvd_factory(digits_repo, "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"]),
                      "--auth-token-file", str(tokens), client_options={"ca": certs["ca.pem"], "token": ADMIN_TOKEN})
    with kvd.client() as client:
        assert client.infer("digits", X)["probabilities"].shape == (2, 10)
    with kvd.client(ca=None, timeout=3) as plaintext:
        code, _ = _code(plaintext.live)
        assert code == grpc.StatusCode.UNAVAILABLE
    env = {**os.environ, "KVSERVE_CA": str(certs["ca.pem"]), "KVSERVE_TOKEN": ADMIN_TOKEN}
    result = subprocess.run([*KVCTL, "--server", kvd.address, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and "ready=True" in result.stdout, result.stderr
    assert "TLS, tokens" in kvd.log()


def test_mutual_tls(kvd_factory, digits_repo, certs):
    client_cert = {"ca": certs["ca.pem"], "cert": certs["client.pem"], "key": certs["client.key"]}
    kvd = kvd_factory(digits_repo, "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"]),
                      "--tls-client-ca", str(certs["ca.pem"]), client_options=client_cert)
    with kvd.client() as client:
        assert client.infer("digits", X)["probabilities"].shape == (2, 10)
    with kvd.client(cert=None, key=None, timeout=3) as no_cert:
        code, _ = _code(no_cert.live)
        assert code == grpc.StatusCode.UNAVAILABLE
    result = subprocess.run([*KVCTL, "--server", kvd.address, "--ca", str(certs["ca.pem"]), "--cert", str(certs["client.pem"]),
                             "--key", str(certs["client.key"]), "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "digits" in result.stdout, result.stderr
