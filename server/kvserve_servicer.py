"""``kvserve.v1.KvServe``: what the v2 protocol lacks (streamed upload, delete, describe, devices, plugins,
benchmark)."""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import grpc

from kvserve.plugins import safe
from kvserve.plugins.manager import Plugins
from kvserve.proto import kvserve_service_pb2 as kv
from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc
from kvserve.server.benchmarks import Benchmarks, BenchmarkSpec
from kvserve.server.errors import InvalidArgument, NotFound
from kvserve.server.models import ModelManager
from kvserve.server.repository import parse_version
from kvserve.server.uploads import UploadPipeline, UploadSpec


def _chunks(requests: Iterator[kv.UploadRequest], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("kind") != "chunk":
            raise InvalidArgument("an upload sends one header, then only chunks")
        yield request.chunk


class KvServeServicer(kv_grpc.KvServeServicer):
    def __init__(self, manager: ModelManager, uploads: UploadPipeline, plugins: Plugins, benchmarks: Benchmarks | None = None) -> None:
        self.manager = manager
        self.uploads = uploads
        self.plugins = plugins
        self.benchmarks = benchmarks or Benchmarks(manager)

    def Upload(self, request_iterator: Iterator[kv.UploadRequest], context: grpc.ServicerContext) -> Iterator[kv.UploadEvent]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidArgument("an upload starts with a header (name, filename, size) before any chunk")
        header = first.header
        spec = UploadSpec(name=header.name, filename=header.filename or "model", size=header.size,
                          precision=header.precision.lower(), devices=list(header.devices), sha256=header.sha256,
                          force=header.options.get("force", "").lower() in {"1", "true", "yes"},
                          samples_npy=header.samples_npy, sample_images=list(header.sample_images),
                          parity_tolerance=header.parity_tolerance, calibration_npy=header.calibration_npy,
                          calibration_images=list(header.calibration_images),
                          performance_hint=header.options.get("performance_hint", ""))
        for event in self.uploads.run(spec, _chunks(request_iterator, context)):
            manifest: dict[str, Any] | None = event.get("manifest")
            yield kv.UploadEvent(
                stage=kv.UploadEvent.Stage.Value(event["stage"]),
                bytes_received=event.get("bytes_received", 0),
                bytes_total=event.get("bytes_total", 0),
                message=event.get("message", ""),
                name=event.get("name", ""),
                version=event.get("version", ""),
                manifest_json=json.dumps(manifest) if manifest else "",
            )

    def Delete(self, request: kv.DeleteRequest, context: grpc.ServicerContext) -> kv.DeleteResponse:
        version = parse_version(request.version) if request.version else None
        removed = self.manager.repository.delete(request.name, version)
        self.manager.forget(request.name, removed)
        return kv.DeleteResponse(versions=[str(v) for v in removed])

    def Describe(self, request: kv.DescribeRequest, context: grpc.ServicerContext) -> kv.DescribeResponse:
        repository = self.manager.repository
        versions = repository.versions(request.name)
        if not versions:
            raise NotFound(self.manager.not_found_message(request.name))
        number = parse_version(request.version) if request.version else versions[-1]
        manifest = repository.read_manifest(request.name, number)
        entry = next((e for e in self.manager.entries() if e.name == request.name and e.version == number), None)
        return kv.DescribeResponse(
            name=request.name, version=str(number), state=entry.state if entry else "UNAVAILABLE",
            reason=entry.reason if entry else "", device=entry.backend if entry else "",
            manifest_json=json.dumps(manifest), versions=[str(v) for v in versions],
        )

    def Devices(self, request: kv.DevicesRequest, context: grpc.ServicerContext) -> kv.DevicesResponse:
        response = kv.DevicesResponse()
        for name, backend in self.manager.backends.items():
            found = safe.availability(backend)
            response.devices.add(name=name, available=found.available, reason=found.reason, full_name=found.full_name,
                                 plugin=type(backend).__module__, precisions=list(getattr(backend, "precisions", ())),
                                 properties=dict(getattr(backend, "properties", dict)()))
        return response

    def Plugins(self, request: kv.PluginsRequest, context: grpc.ServicerContext) -> kv.PluginsResponse:
        response = kv.PluginsResponse()
        for row in self.plugins.describe():
            response.plugins.add(**row)
        return response

    def Benchmark(self, request: kv.BenchmarkRequest, context: grpc.ServicerContext) -> Iterator[kv.BenchmarkEvent]:
        spec = BenchmarkSpec(name=request.name, version=request.version, iterations=request.iterations, warmup=request.warmup,
                             backends=list(request.backends), precisions=list(request.precisions),
                             sample_npy=request.sample_npy, batch=request.batch, seed=request.seed)
        cancelled = threading.Event()
        context.add_callback(cancelled.set)  # the call ended (cancelled, deadline, or done): stop the child
        for event in self.benchmarks.run(spec, cancelled):
            stage = kv.BenchmarkEvent.Stage.Value(event["stage"].upper())
            if stage == kv.BenchmarkEvent.DONE:
                yield kv.BenchmarkEvent(stage=stage, name=event["name"], version=event["version"], input=event["input"],
                                        results=[kv.BenchmarkResult(**row) for row in event["results"]])
            elif stage == kv.BenchmarkEvent.RESULT:
                yield kv.BenchmarkEvent(stage=stage, result=kv.BenchmarkResult(**event["result"]))
            else:
                yield kv.BenchmarkEvent(stage=stage, message=event.get("message", ""))
