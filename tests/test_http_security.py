"""Tokens, roles, TLS and mTLS apply to kvd's HTTP port as they do to gRPC; drain answers 503."""

from __future__ import annotations


import pytest
import requests

from opsutil import ADMIN_TOKEN, READ_TOKEN



def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_roles_on_http(kvd_factory, digits_repo, tokens):
    kvd = kvd_factory(digits_repo, "--auth-token-file", str(tokens), client_options={"token": ADMIN_TOKEN})
    http = kvd.http_url
    for path in ("/v2/health/live", "/v2/health/ready"):  # probes need no token (issue 14)
        assert requests.get(http + path, timeout=30).status_code == 200
    for path in ("/v2/models/digits", "/v1/models/digits", "/v2/models/digits/ready"):
        response = requests.get(http + path, timeout=30)
        assert response.status_code == 401 and "token" in response.json()["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(http + "/v2/models/digits", headers=_auth("x" * 40), timeout=30)
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
    assert requests.get(http + "/v2/models/digits", headers=_auth(READ_TOKEN), timeout=30).status_code == 200
    assert requests.post(http + "/v2/repository/index", headers=_auth(READ_TOKEN), json={}, timeout=30).status_code == 200
    denied = requests.post(http + "/v2/repository/models/digits/unload", headers=_auth(READ_TOKEN), timeout=30)
    assert denied.status_code == 403 and "admin" in denied.json()["error"]
    assert requests.post(http + "/v2/repository/models/digits/load", headers=_auth(READ_TOKEN), timeout=30).status_code == 403
    assert requests.post(http + "/v2/repository/models/digits/load", headers=_auth(ADMIN_TOKEN), timeout=120).status_code == 200
    predict = requests.post(http + "/v1/models/digits:predict", headers=_auth(READ_TOKEN),
                            json={"instances": [[[[0.0]] * 8] * 8]}, timeout=60)
    assert predict.status_code == 200, predict.text


def test_tls_and_mtls_on_http(kvd_factory, digits_repo, certs):
    kvd = kvd_factory(digits_repo, "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"]),
                      "--tls-client-ca", str(certs["ca.pem"]),
                      client_options={"ca": certs["ca.pem"], "cert": certs["client.pem"], "key": certs["client.key"]})
    assert kvd.http_url.startswith("https://")
    ok = requests.get(kvd.http_url + "/v2/models/digits", verify=str(certs["ca.pem"]),
                      cert=(str(certs["client.pem"]), str(certs["client.key"])), timeout=30)
    assert ok.status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):  # no client certificate: refused (TLS 1.3: after the handshake)
        requests.get(kvd.http_url + "/v2/models/digits", verify=str(certs["ca.pem"]), timeout=30)
    with pytest.raises(requests.exceptions.ConnectionError):  # plaintext to a TLS port
        requests.get(f"http://127.0.0.1:{kvd.http_port}/v2/models/digits", timeout=30)
    assert kvd.process.poll() is None


def test_http_disabled_with_empty_address(kvd_factory, digits_repo):
    kvd = kvd_factory(digits_repo, "--http-address", "")
    assert "HTTP (KServe v2 REST" not in kvd.log()
    with kvd.client() as client:
        assert client.ready()


def test_drain_finishes_running_http_calls_and_refuses_new_ones(kvd_factory, digits_repo):
    import signal
    import threading

    from opsutil import sample, scrape, wait_for

    kvd = kvd_factory(digits_repo, "--grace-seconds", "20", env={"KVSERVE_TEST_FAULT": "slow-infer=3"})
    http = kvd.http_url
    name = requests.get(http + "/v2/models/digits", timeout=30).json()["inputs"][0]["name"]
    body = {"inputs": [{"name": name, "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.0] * 64}]}
    result: dict[str, requests.Response] = {}
    running = threading.Thread(target=lambda: result.setdefault("r", requests.post(http + "/v2/models/digits/infer", json=body, timeout=60)))
    running.start()
    wait_for(lambda: sample(scrape(kvd.metrics_url), "kvserve_inflight_requests", method="ModelInfer", model="digits") >= 1, 30,
             "the HTTP call to be running")
    kvd.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "shutting down" in kvd.log(), 10, "kvd to start draining")
    refused = requests.post(http + "/v2/models/digits/infer", json=body, timeout=30)
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
    assert requests.get(http + "/v2/health/ready", timeout=30).status_code == 503
    running.join(60)
    assert result["r"].status_code == 200, result["r"].text
    assert kvd.process.wait(60) == 0
