"""deploy/ manifests, checked offline: every document validates against its schema (kubernetes-validate for
built-in kinds, KServe's CRD schemas for ServingRuntime/InferenceService, unknown fields refused), and kvd
accepts the args they start it with, on the ports they declare and probe."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kvserve.server.main import parse_args

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).parent / "schemas" / "kserve"
KUBERNETES_VERSION = "1.33"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                found.append((f"{path.relative_to(DEPLOY)}#{index}", doc))
    return found


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in SCHEMAS.glob("*.json.gz"):
        crd = json.loads(gzip.decompress(path.read_bytes()))
        schemas[(f"{crd['group']}/{crd['version']}", crd["kind"])] = _strict(crd["schema"])
    return schemas


CRDS = _crd_schemas()


def validate(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` does not validate (jsonschema.ValidationError or kubernetes_validate's errors)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRDS:
        jsonschema.validate(doc, CRDS[key])
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


DOCS = documents()


def test_deploy_has_the_runtime_and_the_cluster():
    kinds = {(name.split("/")[0], doc["kind"]) for name, doc in DOCS}
    assert {("kserve", "ServingRuntime"), ("kserve", "InferenceService"), ("k8s", "Deployment"), ("k8s", "Service"),
            ("k8s", "PersistentVolumeClaim"), ("k8s", "HorizontalPodAutoscaler")} <= kinds


@pytest.mark.parametrize("name,doc", DOCS, ids=[name for name, _ in DOCS])
def test_manifest_validates(name, doc):
    validate(doc)


def test_validation_catches_mistakes():
    """The checks bite: a misspelt field and a wrong type fail, for built-in kinds and for KServe's."""
    by_kind = {doc["kind"]: doc for _, doc in DOCS}
    deployment = copy.deepcopy(by_kind["Deployment"])
    deployment["spec"]["replcas"] = 3
    with pytest.raises(Exception, match="replcas"):
        validate(deployment)
    runtime = copy.deepcopy(by_kind["ServingRuntime"])
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime)
    runtime = copy.deepcopy(by_kind["ServingRuntime"])
    runtime["spec"]["protocolVersion"] = ["v2"]  # the field is protocolVersions
    with pytest.raises(jsonschema.ValidationError, match="protocolVersion"):
        validate(runtime)


def kvd_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, doc in DOCS:
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", spec) if doc["kind"] in ("Deployment", "ServingRuntime") else {}
        for container in pod.get("containers", []):
            yield name, container


# Flags that land with other branches (front doors: the HTTP port; lifecycle: the repository poll).
PENDING = {"--http-address": "kvserve.server.api.rest", "--poll-seconds": "kvserve.server.models.poll"}


def _needs(args: list[str]) -> None:
    for flag, module in PENDING.items():
        if any(a.split("=")[0] == flag for a in args) and importlib.util.find_spec(module) is None:
            pytest.skip(f"{flag} needs {module}, not merged into this branch yet")


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.mark.parametrize("name,container", list(kvd_containers()), ids=[n for n, _ in kvd_containers()])
def test_kvd_accepts_the_args_and_ports_match(name, container):
    args = [a.replace("{{.Name}}", "model") for a in container["args"]]
    _needs(args)
    try:
        settings, _ = parse_args(args)
    except SystemExit as error:  # argparse refused them
        pytest.fail(f"kvd refuses the args of {name}: {args} (exit {error.code})")
    declared = {p["containerPort"] for p in container.get("ports", [])}
    http = _port(settings.http_address) if getattr(settings, "http_address", "") else None
    if name.startswith("kserve"):
        assert declared == {http} == {8080}, "KServe routes HTTP to the runtime's one declared port"
        assert _port(settings.address) == 8081
        assert settings.read_only and settings.models == (("model", Path("/mnt/models")),)
    else:
        assert declared == {_port(settings.address), http, _port(settings.metrics_address)}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            handler = container[probe]
            port = handler["httpGet"]["port"] if "httpGet" in handler else handler["grpc"]["port"]
            assert port in declared, f"{name}: {probe} on a port kvd does not listen on"
            if "httpGet" in handler:
                assert re.fullmatch(r"/v2/health/(ready|live)", handler["httpGet"]["path"])
            else:
                assert port == _port(settings.address)


def _instruction(text: str, keyword: str) -> str:
    """The last ``keyword`` instruction of a Containerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line for line in joined.splitlines() if line.startswith(keyword + " ")]
    assert lines, f"Containerfile has no {keyword}"
    return lines[-1][len(keyword) + 1:].strip()


def test_containerfile_runs_kvd_non_root_with_the_kserve_defaults():
    text = (ROOT / "Containerfile").read_text()
    assert json.loads(_instruction(text, "ENTRYPOINT")) == ["kvd"]
    args = json.loads(_instruction(text, "CMD"))
    assert not re.match(r"(0|root)\b", _instruction(text, "USER"))
    _needs(args)
    settings, _ = parse_args(args)
    runtime = next(doc for _, doc in DOCS if doc["kind"] == "ServingRuntime")
    assert {_port(settings.http_address), _port(settings.address), _port(settings.metrics_address)} == {
        int(p) for p in _instruction(text, "EXPOSE").split()}
    assert sorted(a.split("=")[0] for a in args) == sorted(a.split("=")[0] for a in runtime["spec"]["containers"][0]["args"]
                                                           if not a.startswith("--log-format"))


def test_kvd_started_with_the_serving_runtime_args_serves_mnt_models(kvd_factory, digits, tmp_path):
    """KServe's side of the contract, on loopback: /mnt/models holds the file, the runtime's args start kvd,
    the readiness probe's path answers 200 on the HTTP port, and the model answers over gRPC."""
    import shutil
    import urllib.request

    runtime = next(doc for _, doc in DOCS if doc["kind"] == "ServingRuntime")
    container = runtime["spec"]["containers"][0]
    _needs(container["args"])
    mnt = tmp_path / "mnt" / "models"
    mnt.mkdir(parents=True)
    shutil.copy(digits.paths["keras"], mnt / "model.keras")
    http_port_file = tmp_path / "http.port"
    args = [a.replace("{{.Name}}", "digits").replace("/mnt/models", str(mnt)).replace("/var/lib/kvserve", str(tmp_path / "var"))
            for a in container["args"]]
    args = [re.sub(r"=0\.0\.0\.0:\d+$", "=127.0.0.1:0", a) for a in args if not a.startswith("--insecure")]
    kvd = kvd_factory(tmp_path / "unused", *args, "--http-port-file", str(http_port_file), timeout=300)
    with kvd.client() as client:
        assert client.model_ready("digits")
        (probs,) = client.infer("digits", digits.x_test[:16]).values()
        assert (probs.argmax(1) == digits.keras_probs[:16].argmax(1)).mean() >= 0.9
    probe = container["readinessProbe"]["httpGet"]["path"]
    with urllib.request.urlopen(f"http://127.0.0.1:{int(http_port_file.read_text())}{probe}", timeout=10) as answer:
        assert answer.status == 200
    assert (tmp_path / "var" / "models" / "digits" / "1" / "manifest.json").is_file()
