"""``kvserve.v1.KvServe``: what the v2 protocol lacks (streamed upload, delete, describe, devices, plugins,
benchmark)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterator

from kvserve.plugins import safe
from kvserve.plugins.manager import Plugins
from kvserve.proto import kvserve_service_pb2 as kv
from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc
from kvserve.server.api.grpc.streams import ChunkFeed, in_thread, next_message, read_chunks
from kvserve.server.uploads.benchmarks import Benchmarks, BenchmarkSpec
from kvserve.server.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound
from kvserve.server.ops.limits import Abandon
from kvserve.server.batching import DEFAULT_QUEUE_DELAY_MS, BatchPolicy
from kvserve.server.models import lifecycle
from kvserve.server.models.manager import ModelManager, ModelVersion
from kvserve.server.models.repository import parse_version
from kvserve.server.models.labels import check_count, parse_labels
from kvserve.server.uploads.pipeline import UploadPipeline, UploadSpec, checked_preprocess


def _preprocessing(message: kv.Preprocessing) -> dict[str, Any]:
    return {"mode": message.mode or "none", "resize": message.resize or "bilinear", "center_crop": message.center_crop}


class KvServeServicer(kv_grpc.KvServeServicer):
    def __init__(self, manager: ModelManager, uploads: UploadPipeline, plugins: Plugins, benchmarks: Benchmarks | None = None) -> None:
        self.manager = manager
        self.uploads = uploads
        self.plugins = plugins
        self.benchmarks = benchmarks or Benchmarks(manager)

    def _writable(self, what: str) -> None:
        """A ``--read-only`` replica serves a repository some other kvd writes: it refuses every change."""
        if self.manager.settings.read_only:
            raise FailedPrecondition(f"this kvd is read-only (--read-only) and takes no {what}; send it to the writer kvd of this repository")

    async def Upload(self, request_iterator: AsyncIterator[kv.UploadRequest], context: Any) -> AsyncIterator[kv.UploadEvent]:
        self._writable("uploads")
        settings = self.uploads.settings
        requests = request_iterator.__aiter__()
        first = await next_message(requests, settings.upload_idle_s, "before its header")
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidArgument("an upload starts with a header (name, filename, size) before any chunk")
        header = first.header
        spec = UploadSpec(name=header.name, filename=header.filename or "model", size=header.size,
                          precision=header.precision.lower(), devices=list(header.devices), sha256=header.sha256,
                          force=header.options.get("force", "").lower() in {"1", "true", "yes"},
                          samples_npy=header.samples_npy, sample_images=list(header.sample_images),
                          parity_tolerance=header.parity_tolerance,
                          preprocess=_preprocessing(header.preprocessing) if header.HasField("preprocessing") else None,
                          labels=header.labels, labels_filename=header.labels_filename or "labels",
                          calibration_npy=header.calibration_npy, calibration_images=list(header.calibration_images),
                          performance_hint=header.options.get("performance_hint", ""))
        abandon = Abandon()
        feed = ChunkFeed(asyncio.get_running_loop())
        abandon.on_set(lambda: feed.fail(abandon.error or Cancelled("the upload was stopped")))
        reader = asyncio.create_task(read_chunks(requests, feed, abandon, settings.upload_idle_s, settings.upload_total_s))
        finished = False
        try:
            async for event in in_thread(self.uploads.run(spec, feed, abandon), "kvd-upload"):
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
            finished = True
        finally:
            reader.cancel()
            if not finished:
                abandon.set(Cancelled("the client went away; the upload was discarded"))

    async def Delete(self, request: Any, context: Any) -> Any:
        self._writable("deletes")
        return await asyncio.to_thread(self._delete, request)

    def _delete(self, request: kv.DeleteRequest) -> kv.DeleteResponse:
        version = parse_version(request.version) if request.version else None
        return kv.DeleteResponse(versions=[str(v) for v in lifecycle.delete(self.manager, request.name, version)])

    async def Pin(self, request: kv.PinRequest, context: Any) -> kv.PinResponse:
        self._writable("pins")
        return await asyncio.to_thread(self._pin, request)

    def _pin(self, request: kv.PinRequest) -> kv.PinResponse:
        return kv.PinResponse(**lifecycle.pin(self.manager, request.name, kv.PinRequest.Action.Name(request.action).lower(),
                                              request.version))

    async def GetConfig(self, request: kv.GetConfigRequest, context: Any) -> kv.GetConfigResponse:
        return await asyncio.to_thread(self._get_config, request)

    def _get_config(self, request: kv.GetConfigRequest) -> kv.GetConfigResponse:
        return kv.GetConfigResponse(config_json=json.dumps(self.manager.describe_config()))

    async def Describe(self, request: Any, context: Any) -> Any:
        return await asyncio.to_thread(self._describe_request, request)

    def _describe_request(self, request: kv.DescribeRequest) -> kv.DescribeResponse:
        name, number = self._version(request.name, request.version)
        return self._describe(name, number, self.manager.repository.read_manifest(name, number))

    async def Configure(self, request: Any, context: Any) -> Any:
        self._writable("manifest edits")
        return await asyncio.to_thread(self._configure, request)

    def _configure(self, request: kv.ConfigureRequest) -> kv.DescribeResponse:
        name, number = self._version(request.name, request.version)
        manifest = self.manager.repository.read_manifest(name, number)
        changes: dict[str, Any] = {}
        if request.HasField("preprocessing"):
            changes["preprocess"] = {**checked_preprocess(_preprocessing(request.preprocessing)), "source": "user"}
        if request.clear_labels:
            changes["labels"] = None
        elif request.labels:
            changes["labels"] = parse_labels(request.labels, request.labels_filename or "labels")
            check_count(changes["labels"], manifest["outputs"])
        if request.HasField("max_batch_size") or request.HasField("max_queue_delay_ms"):
            current = manifest.get("dynamic_batching") or {}
            entry = ModelVersion.from_manifest(name, number, manifest)
            changes["dynamic_batching"] = BatchPolicy.checked(
                request.max_batch_size if request.HasField("max_batch_size") else int(current.get("max_batch_size", 0)),
                request.max_queue_delay_ms if request.HasField("max_queue_delay_ms") else float(current.get("max_queue_delay_ms", DEFAULT_QUEUE_DELAY_MS)),
                list(request.preferred_batch_sizes) or list(current.get("preferred_batch_sizes", [])), entry.inputs, entry.outputs)
        if not changes:
            raise InvalidArgument("nothing to change: give preprocessing, labels, clear_labels or batching (--max-batch/--max-delay-ms)")
        manifest = self.manager.repository.update_manifest(name, number, changes)
        self.manager.refresh_manifest(name, number, manifest)
        return self._describe(name, number, manifest)

    def _version(self, name: str, version: str) -> tuple[str, int]:
        versions = self.manager.repository.versions(name)
        if not versions:
            raise NotFound(self.manager.not_found_message(name))
        number = parse_version(version) if version else versions[-1]
        self.manager.repository.version_dir(name, number)  # NotFound naming the versions
        return name, number

    def _describe(self, name: str, number: int, manifest: dict[str, Any]) -> kv.DescribeResponse:
        entry = next((e for e in self.manager.entries() if e.name == name and e.version == number), None)
        return kv.DescribeResponse(
            name=name, version=str(number), state=entry.state if entry else "UNAVAILABLE",
            reason=entry.reason if entry else "", device=entry.backend if entry else "",
            manifest_json=json.dumps(manifest), versions=[str(v) for v in self.manager.repository.versions(name)],
        )

    async def Devices(self, request: Any, context: Any) -> Any:
        return await asyncio.to_thread(self._devices, request)

    def _devices(self, request: kv.DevicesRequest) -> kv.DevicesResponse:
        response = kv.DevicesResponse()
        for name, backend in self.manager.backends.items():
            found = safe.availability(backend)
            response.devices.add(name=name, available=found.available, reason=found.reason, full_name=found.full_name,
                                 plugin=type(backend).__module__, precisions=list(getattr(backend, "precisions", ())),
                                 properties=dict(getattr(backend, "properties", dict)()))
        return response

    async def Plugins(self, request: Any, context: Any) -> Any:
        return await asyncio.to_thread(self._plugins, request)

    def _plugins(self, request: kv.PluginsRequest) -> kv.PluginsResponse:
        response = kv.PluginsResponse()
        for row in self.plugins.describe():
            response.plugins.add(**row)
        return response

    async def Benchmark(self, request: kv.BenchmarkRequest, context: Any) -> AsyncIterator[kv.BenchmarkEvent]:
        spec = BenchmarkSpec(name=request.name, version=request.version, iterations=request.iterations, warmup=request.warmup,
                             backends=list(request.backends), precisions=list(request.precisions),
                             sample_npy=request.sample_npy, batch=request.batch, seed=request.seed)
        cancelled = threading.Event()
        try:
            async for event in in_thread(self.benchmarks.run(spec, cancelled), "kvd-benchmark"):
                stage = kv.BenchmarkEvent.Stage.Value(event["stage"].upper())
                if stage == kv.BenchmarkEvent.DONE:
                    yield kv.BenchmarkEvent(stage=stage, name=event["name"], version=event["version"], input=event["input"],
                                            results=[kv.BenchmarkResult(**row) for row in event["results"]])
                elif stage == kv.BenchmarkEvent.RESULT:
                    yield kv.BenchmarkEvent(stage=stage, result=kv.BenchmarkResult(**event["result"]))
                else:
                    yield kv.BenchmarkEvent(stage=stage, message=event.get("message", ""))
        finally:
            cancelled.set()  # the call ended (cancelled, deadline, or done): stop the child
