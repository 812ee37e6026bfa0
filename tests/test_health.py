"""Health and readiness: NOT_SERVING while starting, per-model status, still ready (and serving the old runner)
while a model reloads; the standard health service and reflection answer over the wire."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from unittest import mock

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvserve.plugins.types import Availability
from kvserve.server.ops.health import NOT_SERVING, SERVING, HealthReporter
from kvserve.server.models.manager import ModelManager
from kvserve.server.models.repository import Repository
from kvserve.server.settings import Settings

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}


class FakeRunner:
    def __init__(self, tag: float) -> None:
        self.tag = tag
        self.closed = False

    def infer(self, inputs, outputs=None):
        return {"y": inputs["x"] * 0 + self.tag}

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Loads instantly, or waits for ``gate`` when it is cleared; counts loads to tag its runners."""

    name = "FAKE"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.loading = threading.Event()
        self.loads = 0

    def availability(self) -> Availability:
        return Availability(True)

    def can_serve(self, manifest):
        return None

    def load(self, request):
        self.loading.set()
        assert self.gate.wait(30)
        self.loads += 1
        return FakeRunner(float(self.loads))


def _publish(repository: Repository, name: str, devices: list[str]) -> None:
    folder = repository.root / name / "1"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({**SIGNATURE, "name": name, "version": "1", "devices": devices}))


@pytest.fixture
def world(tmp_path: Path):
    repository = Repository(tmp_path / "repo")
    _publish(repository, "m", ["FAKE"])
    _publish(repository, "bad", ["NOPE"])
    backend = FakeBackend()
    plugins = mock.Mock(backends=lambda: [backend])
    manager = ModelManager(repository, plugins, Settings(repository=tmp_path / "repo"))
    return manager, backend, HealthReporter(manager)


def _status(reporter: HealthReporter, service: str) -> int:
    return asyncio.run(reporter.servicer.Check(health_pb2.HealthCheckRequest(service=service), mock.Mock())).status


def test_not_serving_until_every_model_is_loaded_or_failed(world):
    manager, backend, reporter = world
    backend.gate.clear()
    startup = threading.Thread(target=manager.load_all)
    startup.start()
    assert backend.loading.wait(10)
    assert _status(reporter, "") == NOT_SERVING and not manager.ready()
    backend.gate.set()
    startup.join(10)
    assert manager.ready() and _status(reporter, "") == SERVING
    assert _status(reporter, "m") == SERVING
    assert _status(reporter, "bad") == NOT_SERVING  # failed, with its reason recorded
    bad = next(e for e in manager.entries() if e.name == "bad")
    assert "NOPE: no backend plugin provides it" in bad.reason
    reporter.drain()
    assert _status(reporter, "") == NOT_SERVING and _status(reporter, "m") == NOT_SERVING


def test_reload_keeps_serving_the_old_runner_until_the_new_one_is_in(world):
    manager, backend, reporter = world
    manager.load_all()
    x = {"x": np.ones((1, 2), np.float32)}
    old = manager.get("m")
    lease = manager.lease(old)
    old_runner = lease.__enter__()  # a request still running on the old runner
    backend.gate.clear()
    backend.loading.clear()
    reload = threading.Thread(target=manager.load, args=("m", None, ["FAKE"]))
    reload.start()
    assert backend.loading.wait(10)
    during = manager.get("m")  # mid-reload: ready, healthy, answered by the old runner
    with manager.lease(during) as runner:
        assert during is old and runner is old_runner and runner.infer(x)["y"][0, 0] == 1.0
    assert manager.ready() and _status(reporter, "m") == SERVING
    backend.gate.set()
    reload.join(10)
    with manager.lease(manager.get("m")) as runner:
        assert runner.infer(x)["y"][0, 0] == 2.0
    assert not old_runner.closed  # the request leasing it is not done yet
    with manager.lease(old) as runner:  # looked up before the reload, leased after: gets the new runner
        assert runner.infer(x)["y"][0, 0] == 2.0
    lease.__exit__(None, None, None)
    assert old_runner.closed and _status(reporter, "m") == SERVING


def test_unload_and_forget_update_health(world):
    manager, _backend, reporter = world
    manager.load_all()
    manager.unload("m")
    assert _status(reporter, "m") == NOT_SERVING
    manager.load("m")
    assert _status(reporter, "m") == SERVING


def test_health_and_reflection_over_the_wire(served_digits):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(served_digits.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "kvserve.v1.KvServe", "grpc.health.v1.Health"} <= services
        infer = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        assert any(s.name == "GRPCInferenceService" for s in infer.service)
        assert database.FindFileContainingSymbol("kvserve.v1.UploadHeader").package == "kvserve.v1"
