"""``Client``: a thin, typed wrapper over kvd's two gRPC services.

Tensors travel as raw little-endian bytes (the cheapest form for both ends). Errors arrive as
``kvserve.client.errors.KvserveError`` subclasses (NotFound, InvalidArgument, Unavailable, ...) carrying the
server's status and message; grpc's own exception classes never leave this module.
"""

from __future__ import annotations


import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from kvserve.proto import classes
from kvserve.proto.classes import TopClass
from kvserve.client.credentials import Credentials
from kvserve.client.errors import InvalidAddress, InvalidArgument, translated
from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import grpc_service_pb2_grpc as pb_grpc
from kvserve.proto import kvserve_service_pb2 as kv
from kvserve.proto import kvserve_service_pb2_grpc as kv_grpc
from kvserve.proto.tensors import DATATYPES, build_infer_request, decode_response_outputs

DEFAULT_PORT = 8500
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UploadProgress:
    """One progress event of an upload: stage is RECEIVING, RECEIVED, CONVERTING, VERIFYING, LOADING or READY."""

    stage: str
    bytes_received: int = 0
    bytes_total: int = 0
    message: str = ""
    version: str = ""


@dataclass(frozen=True)
class BenchmarkProgress:
    """One event of a benchmark: stage PREPARING or RUNNING with a message, or RESULT with one finished row."""

    stage: str
    message: str = ""
    result: dict[str, Any] | None = None


def default_server() -> str:
    return os.environ.get("KVSERVE_SERVER", DEFAULT_SERVER)


def parse_address(address: str) -> str:
    """A gRPC target from what a user typed: ``host:port``, ``[v6]:port``, or a bare host (port 8500 added).

    A URL (``http://...``) is refused: kvd's gRPC port is not an HTTP URL, and grpc would silently treat
    the scheme as a resolver name. Without this, ``127.0.0.1`` alone would go to port 443.
    """
    text = address.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        hint = rest.rstrip("/") or "HOST:PORT"
        raise InvalidAddress(f"--server takes HOST:PORT of kvd's gRPC port, not a URL: use '{hint}' instead of '{text}'")
    if text.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return text
    if not text:
        raise InvalidAddress("--server is empty; give HOST:PORT, e.g. 127.0.0.1:8500")
    if text.startswith("["):
        return text if "]:" in text else f"{text}:{DEFAULT_PORT}"
    host, sep, port = text.rpartition(":")
    if not sep:
        return f"{text}:{DEFAULT_PORT}"
    if text.count(":") > 1:  # a bare IPv6 address
        return f"[{text}]:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise InvalidAddress(f"--server '{text}': the port must be a number from 1 to 65535, e.g. 127.0.0.1:8500")
    return text


def _pack_directory(path: Path) -> bytes:
    """A SavedModel directory travels as an in-memory .tar.gz of its contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(path, arcname=path.name)
    return buffer.getvalue()


class Client:
    def __init__(self, address: str | None = None, timeout: float | None = 60.0, max_message_bytes: int = MAX_MESSAGE_BYTES, *,
                 token: str | None = None, ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                 key: str | os.PathLike[str] | None = None, channel_options: list[tuple[str, object]] | None = None) -> None:
        """``token``/``ca``/``cert``/``key`` default to KVSERVE_TOKEN/KVSERVE_CA/KVSERVE_CERT/KVSERVE_KEY; a CA turns TLS on.

        ``channel_options`` are added to the channel's, e.g. ``kvserve.client.balancing.channel_options()`` with an
        ``ipv4:a:1,b:2`` address to spread calls over replicas and retry UNAVAILABLE elsewhere.
        """
        self.address = parse_address(address or default_server())
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes),
                   *(channel_options or [])]
        self.channel = Credentials.resolve(token, ca, cert, key).channel(self.address, options)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.kvserve = kv_grpc.KvServeStub(self.channel)
        self._metadata: dict[tuple[str, str], dict[str, Any]] = {}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- health and metadata ------------------------------------------------------------------------
    def live(self) -> bool:
        return self.inference.ServerLive(pb.ServerLiveRequest(), timeout=self.timeout).live

    def ready(self) -> bool:
        return self.inference.ServerReady(pb.ServerReadyRequest(), timeout=self.timeout).ready

    def server_metadata(self) -> dict[str, Any]:
        meta = self.inference.ServerMetadata(pb.ServerMetadataRequest(), timeout=self.timeout)
        return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}

    def metadata(self, model: str, version: str = "") -> dict[str, Any]:
        meta = self.inference.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version), timeout=self.timeout)
        result = {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
        }
        self._metadata[(model, version)] = result
        return result

    def model_ready(self, model: str, version: str = "") -> bool:
        return self.inference.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=self.timeout).ready

    def list_models(self) -> list[dict[str, str]]:
        index = self.inference.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=self.timeout)
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models]

    def describe(self, model: str, version: str = "") -> dict[str, Any]:
        return _described(self.kvserve.Describe(kv.DescribeRequest(name=model, version=version), timeout=self.timeout))

    def devices(self) -> list[dict[str, Any]]:
        reply = self.kvserve.Devices(kv.DevicesRequest(), timeout=self.timeout)
        return [{"name": d.name, "available": d.available, "reason": d.reason, "full_name": d.full_name, "plugin": d.plugin,
                 "precisions": list(d.precisions), "properties": dict(d.properties)} for d in reply.devices]

    def plugins(self) -> list[dict[str, Any]]:
        reply = self.kvserve.Plugins(kv.PluginsRequest(), timeout=self.timeout)
        return [{"name": p.name, "version": p.version, "hooks": list(p.hooks), "builtin": p.builtin, "error": p.error} for p in reply.plugins]

    # --- inference ----------------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, version: str = "",
              outputs: list[str] | None = None, request_id: str = "") -> dict[str, np.ndarray]:
        """Run the model; ``inputs`` is a dict by input name, or one array for a single-input model."""
        request = build_infer_request(model, self._named(model, version, inputs), version=version, outputs=outputs or (),
                                      request_id=request_id)
        return decode_response_outputs(self.inference.ModelInfer(request, timeout=self.timeout))

    def classify(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, k: int = 5, version: str = "",
                 output: str = "") -> list[list[TopClass]]:
        """Top-k classes per batch row, computed on the server (with the model's labels, if it has them).

        ``inputs`` may be image bytes (a BYTES array of encoded images): kvd then decodes and preprocesses
        them per the model's manifest.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgument(f"k must be a whole number of classes, 1 or more; got {k!r}")
        request = build_infer_request(model, self._named(model, version, inputs), version=version,
                                      classification={output: k} if output else None, top_k=0 if output else k)
        outputs = decode_response_outputs(self.inference.ModelInfer(request, timeout=self.timeout))
        return classes.decode(outputs[output] if output else next(iter(outputs.values())))

    def _named(self, model: str, version: str, inputs: Mapping[str, Any] | Any) -> Mapping[str, np.ndarray]:
        """A single array is fed to the model's only input; lists and other-dtype arrays become the model's dtype.

        Python lists arrive as float64/int64; a model takes FP32 (usually): the values are cast when the cast
        keeps their kind (number to number), so ``kv.infer("digits", [[...]])`` just works.
        """
        if isinstance(inputs, Mapping) and all(isinstance(v, np.ndarray) and v.dtype != np.float64 and v.dtype != np.int64
                                               for v in inputs.values()):
            return inputs  # the common fast path: no metadata call
        meta = self._metadata.get((model, version)) or self.metadata(model, version)
        specs = {i["name"]: i for i in meta["inputs"]}
        if not isinstance(inputs, Mapping):
            if len(specs) != 1:
                raise InvalidArgument(f"model '{model}' has {len(specs)} inputs ({', '.join(specs)}); pass a dict by input name")
            inputs = {next(iter(specs)): inputs}
        return {name: _as_model_dtype(name, value, specs.get(name)) for name, value in inputs.items()}

    # --- repository ---------------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike[str], name: str | None = None, precision: str = "", devices: list[str] | None = None,
               force: bool = False, progress: Callable[[UploadProgress], None] | None = None, timeout: float | None = None,
               samples: str | os.PathLike[str] | None = None, tolerance: float = 0.0, preprocess: str | None = None,
               resize: str = "bilinear", center_crop: bool = False, labels: str | os.PathLike[str] | None = None,
               calibration: str | os.PathLike[str] | None = None, performance_hint: str = "") -> dict[str, Any]:
        """Upload a Keras .h5/.keras file or a SavedModel (directory, .zip or .tar.gz); returns the manifest.

        ``samples`` (a .npy batch or a folder of images) replaces the seeded inputs of the parity check;
        ``tolerance`` overrides its max relative difference. ``preprocess`` (none, unit, inception, caffe, torch)
        says how images become the model's input (default: suggested from a Keras application architecture);
        ``labels`` is a text file (one per line) or JSON. ``calibration`` (a .npy batch or a folder of images)
        calibrates an int8 upload. ``performance_hint`` (LATENCY or THROUGHPUT) overrides kvd's for this model.
        """
        path = Path(path)
        if path.is_dir():
            payload: bytes | None = _pack_directory(path)
            filename, size = f"{path.name}.tar.gz", len(payload)
        else:
            payload, filename, size = None, path.name, path.stat().st_size
        model_name = name or path.name.split(".")[0]
        options = {"force": "1"} if force else {}
        if performance_hint:
            options["performance_hint"] = performance_hint.upper()
        header = kv.UploadHeader(name=model_name, filename=filename, size=size, precision=precision, devices=devices or [],
                                 options=options, parity_tolerance=tolerance,
                                 **_user_inputs(samples, ("samples_npy", "sample_images"), "parity samples", 64),
                                 **_user_inputs(calibration, ("calibration_npy", "calibration_images"), "calibration data", 300),
                                 **_model_settings(preprocess, resize, center_crop, labels))

        def requests() -> Iterator[kv.UploadRequest]:
            yield kv.UploadRequest(header=header)
            if payload is not None:
                for offset in range(0, len(payload), CHUNK_BYTES):
                    yield kv.UploadRequest(chunk=payload[offset : offset + CHUNK_BYTES])
                return
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield kv.UploadRequest(chunk=chunk)

        manifest: dict[str, Any] = {}
        for event in self.kvserve.Upload(requests(), timeout=timeout):
            stage = kv.UploadEvent.Stage.Name(event.stage)
            if progress is not None:
                progress(UploadProgress(stage, event.bytes_received, event.bytes_total, event.message, event.version))
            if event.manifest_json:
                manifest = json.loads(event.manifest_json)
        return manifest

    def configure(self, model: str, version: str = "", preprocess: str | None = None, resize: str = "bilinear",
                  center_crop: bool = False, labels: str | os.PathLike[str] | None = None, clear_labels: bool = False,
                  max_batch: int | None = None, max_delay_ms: float | None = None,
                  preferred_batch_sizes: list[int] | None = None) -> dict[str, Any]:
        """Change a stored model's preprocessing, labels or dynamic batching (``max_batch`` 0 turns it off) without
        a new upload; returns ``describe``'s answer."""
        batching: dict[str, Any] = {}
        if max_batch is not None:
            batching["max_batch_size"] = max_batch
        if max_delay_ms is not None:
            batching["max_queue_delay_ms"] = max_delay_ms
        request = kv.ConfigureRequest(name=model, version=version, clear_labels=clear_labels,
                                      preferred_batch_sizes=preferred_batch_sizes or [], **batching,
                                      **_model_settings(preprocess, resize, center_crop, labels))
        return _described(self.kvserve.Configure(request, timeout=self.timeout))
    def benchmark(self, model: str, version: str = "", iterations: int = 0, backends: list[str] | None = None,
                  precisions: list[str] | None = None, sample: str | os.PathLike[str] | None = None, batch: int = 0,
                  warmup: int = 0, seed: int = 0, progress: Callable[[BenchmarkProgress], None] | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
        """Run the server-side comparison (Keras, TF, OpenVINO per device and precision) on ``model``.

        Returns ``{"name", "version", "input", "results": [row, ...]}``, Keras first; a row has the fields of
        ``BenchmarkResult`` (backend, precision, avg_s, p50_s, p90_s, p99_s, min_s, max_s, fps, requests,
        speedup_vs_keras, ...). ``sample`` is a .npy input; without it the server feeds seeded random data.
        """
        request = kv.BenchmarkRequest(name=model, version=version, iterations=iterations, warmup=warmup, backends=backends or [],
                                      precisions=precisions or [], batch=batch, seed=seed,
                                      sample_npy=Path(sample).read_bytes() if sample is not None else b"")
        report: dict[str, Any] = {}
        for event in self.kvserve.Benchmark(request, timeout=timeout):
            stage = kv.BenchmarkEvent.Stage.Name(event.stage)
            if stage == "DONE":
                report = {"name": event.name, "version": event.version, "input": event.input, "results": [_row(r) for r in event.results]}
            elif progress is not None:
                progress(BenchmarkProgress(stage, event.message, _row(event.result) if stage == "RESULT" else None))
        return report

    def delete(self, model: str, version: str = "") -> list[str]:
        return list(self.kvserve.Delete(kv.DeleteRequest(name=model, version=version), timeout=self.timeout).versions)

    def pin(self, model: str, version: str) -> dict[str, str]:
        """Serve ``version`` to requests that name none (persisted by kvd); returns name/serving/pinned/message."""
        return self._pin(model, kv.PinRequest.PIN, str(version))

    def unpin(self, model: str) -> dict[str, str]:
        """Back to the config file's pin, else the latest ready version."""
        return self._pin(model, kv.PinRequest.UNPIN)

    def rollback(self, model: str) -> dict[str, str]:
        """Pin the version below the one serving now."""
        return self._pin(model, kv.PinRequest.ROLLBACK)

    def _pin(self, model: str, action: int, version: str = "") -> dict[str, str]:
        reply = self.kvserve.Pin(kv.PinRequest(name=model, version=version, action=action), timeout=timeout_or(self.timeout))
        return {"name": reply.name, "serving": reply.serving, "pinned": reply.pinned, "message": reply.message}

    def config(self) -> dict[str, Any]:
        """kvd's effective configuration: config-file defaults and models, pins, serving versions."""
        return json.loads(self.kvserve.GetConfig(kv.GetConfigRequest(), timeout=self.timeout).config_json)

    def load(self, model: str, version: str = "", devices: list[str] | None = None) -> None:
        parameters = {}
        if version:
            parameters["version"] = pb.ModelRepositoryParameter(string_param=version)
        if devices:
            parameters["devices"] = pb.ModelRepositoryParameter(string_param=",".join(devices))
        self.inference.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=model, parameters=parameters), timeout=timeout_or(self.timeout))

    def unload(self, model: str) -> None:
        self.inference.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=model), timeout=self.timeout)


def _as_model_dtype(name: str, value: Any, spec: dict[str, Any] | None) -> np.ndarray:
    """``value`` as an array of the input's datatype (numbers stay numbers; strings and bytes stay as they are)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if spec is None or spec["datatype"] not in DATATYPES or spec["datatype"] == "BYTES":
        return array
    target = np.dtype(DATATYPES[spec["datatype"]])
    if array.dtype == target or array.dtype.kind not in "biuf":
        return array
    if array.dtype.kind == "f" and target.kind in "iu":
        raise InvalidArgument(f"input '{name}' holds floats but the model takes {spec['datatype']}; round them first")
    return array.astype(target)


def _described(reply: kv.DescribeResponse) -> dict[str, Any]:
    return {"name": reply.name, "version": reply.version, "state": reply.state, "reason": reply.reason,
            "device": reply.device, "versions": list(reply.versions), "manifest": json.loads(reply.manifest_json or "{}")}


def _model_settings(preprocess: str | None, resize: str, center_crop: bool, labels: str | os.PathLike[str] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if preprocess is not None:
        fields["preprocessing"] = kv.Preprocessing(mode=preprocess, resize=resize, center_crop=center_crop)
    if labels is not None:
        fields["labels"], fields["labels_filename"] = Path(labels).read_bytes(), Path(labels).name
    return fields


def _user_inputs(source: str | os.PathLike[str] | None, fields: tuple[str, str], purpose: str, limit: int) -> dict[str, Any]:
    """A .npy batch or a folder of images (the first ``limit``, by name) as header fields ``fields`` (npy, images)."""
    if source is None:
        return {}
    path = Path(source)
    if path.is_dir():
        from kvserve.client.inputs import IMAGE_SUFFIXES

        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to use as {purpose}")
        return {fields[1]: [p.read_bytes() for p in images[:limit]]}
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: {purpose} are a .npy file or a folder of images")
    return {fields[0]: path.read_bytes()}


def _row(result: kv.BenchmarkResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in result.DESCRIPTOR.fields}


def timeout_or(timeout: float | None, at_least: float = 300.0) -> float | None:
    """Loading can compile a large model: give it at least ``at_least`` seconds."""
    return None if timeout is None else max(timeout, at_least)


# Every public call leaves as a kvserve exception, never a grpc one.
for _name, _member in list(vars(Client).items()):
    if callable(_member) and not _name.startswith("_") and _name != "close":
        setattr(Client, _name, translated(_member))
