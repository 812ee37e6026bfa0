"""One upload, start to finish: receive into staging, sniff, convert in a child, verify, load, publish.

Transport-neutral: takes the header and an iterator of chunks, yields progress events (dicts). The version
becomes visible only after it has loaded on a device, by an atomic rename; any failure or a cancelled client
leaves nothing behind but an empty staging slot that is removed here (or at the next start).

At most ``--max-uploads`` run at once. An upload whose client goes away, or that kvd abandons at shutdown,
stops at the next chunk, its converter child is killed, and its staging is removed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from kvserve.proto.images import Preprocess
from kvserve.server.uploads import formats
from kvserve.server.ops import disk, metrics
from kvserve.server.uploads.conversion import converter_launcher, run_conversion
from kvserve.server.errors import FailedPrecondition, InvalidArgument, KvError, ResourceExhausted, Unavailable
from kvserve.server.models.inherit import Inherited, inherit
from kvserve.server.models.labels import check_count, parse_labels
from kvserve.server.ops.limits import Abandon, UploadSlots
from kvserve.server.models.manager import READY, ModelManager, ModelVersion
from kvserve.server.models.repository import Repository, file_digests, sha256_file as sha256_of, validate_name
from kvserve.server.settings import PERFORMANCE_HINTS, PRECISIONS, Settings

log = logging.getLogger("kvserve.server.uploads.pipeline")

PROGRESS_EVERY_BYTES = 4 * 1024 * 1024
SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".keras", ".h5", ".hdf5")


def _requested_preprocess(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The preprocessing the user asked for at upload, for a rebuild to ask for again; None when kvd chose it (a
    default or a suggestion), so the converter chooses the same way and draws the same parity inputs."""
    preprocess = manifest.get("preprocess") or {}
    if not str(preprocess.get("source", "")).startswith("user"):
        return None
    return {k: v for k, v in preprocess.items() if k != "source"} or None


@dataclass
class UploadSpec:
    name: str
    filename: str = "model"
    size: int = 0
    precision: str = ""
    devices: list[str] = field(default_factory=list)
    sha256: str = ""
    force: bool = False
    samples_npy: bytes = b""
    sample_images: list[bytes] = field(default_factory=list)
    parity_tolerance: float = 0.0
    preprocess: dict[str, Any] | None = None
    labels: bytes = b""
    labels_filename: str = "labels"
    calibration_npy: bytes = b""
    calibration_images: list[bytes] = field(default_factory=list)
    performance_hint: str = ""


def checked_preprocess(data: dict[str, Any]) -> dict[str, Any]:
    """A valid preprocessing dict, or InvalidArgument saying which modes and resize methods exist."""
    try:
        return Preprocess.from_dict(data).to_dict()
    except ValueError as error:
        raise InvalidArgument(str(error)) from None


def _stage_inputs(folder: Path, keys: tuple[str, str], npy: bytes, images: list[bytes]) -> dict[str, Any]:
    """User-given inputs (parity samples, calibration data) go to files the converter child reads; returns
    the job entry naming them: ``{keys[0]: the .npy path}`` or ``{keys[1]: [image paths]}``."""
    if not npy and not images:
        return {}
    folder.mkdir()
    if npy:
        (folder / "inputs.npy").write_bytes(npy)
        return {keys[0]: str(folder / "inputs.npy")}
    paths = []
    for index, data in enumerate(images):
        path = folder / f"image-{index:04d}"
        path.write_bytes(data)
        paths.append(str(path))
    return {keys[1]: paths}


def _suffix(filename: str) -> str:
    lower = filename.lower()
    return next((s for s in SUFFIXES if lower.endswith(s)), ".bin")


class UploadPipeline:
    def __init__(self, repository: Repository, manager: ModelManager, settings: Settings) -> None:
        self.repository = repository
        self.manager = manager
        self.settings = settings
        self.launcher = converter_launcher(settings.warm_converter, label=str(repository.root), memory_bytes=settings.child_memory_bytes)
        self.slots = UploadSlots(settings.max_uploads, settings.upload_queue_s)
        self._active: set[Abandon] = set()
        self._finished = threading.Condition()

    def abandon_all(self, message: str) -> None:
        """Stop every upload in progress (shutdown): each fails UNAVAILABLE and cleans up after itself."""
        with self._finished:
            active = list(self._active)
        for abandon in active:
            abandon.set(Unavailable(message))

    def wait_finished(self, timeout: float) -> bool:
        with self._finished:
            return self._finished.wait_for(lambda: not self._active, timeout)

    @contextmanager
    def _tracked(self, abandon: Abandon) -> Iterator[None]:
        with self._finished:
            self._active.add(abandon)
        metrics.UPLOADS_IN_PROGRESS.inc()
        try:
            yield
        finally:
            metrics.UPLOADS_IN_PROGRESS.dec()
            with self._finished:
                self._active.discard(abandon)
                self._finished.notify_all()

    def validate(self, spec: UploadSpec) -> UploadSpec:
        validate_name(spec.name)
        spec.precision = spec.precision or self.settings.default_precision
        if spec.precision not in PRECISIONS:
            raise InvalidArgument(f"unknown precision '{spec.precision}'; use one of {', '.join(PRECISIONS)}")
        spec.devices = [d.strip().upper() for d in spec.devices if d.strip()] or list(self.settings.default_devices)
        unknown = [d for d in spec.devices if d not in self.manager.backends]
        if unknown:
            raise InvalidArgument(f"unknown device {', '.join(unknown)}; devices: {', '.join(self.manager.backends)}")
        if spec.preprocess is not None:
            spec.preprocess = checked_preprocess(spec.preprocess)
        if spec.labels:
            parse_labels(spec.labels, spec.labels_filename)  # fail before converting
        if (spec.calibration_npy or spec.calibration_images) and spec.precision != "int8":
            raise InvalidArgument(f"calibration data is only used by --precision int8, not {spec.precision}; drop it or ask for int8")
        spec.performance_hint = spec.performance_hint.upper()
        if spec.performance_hint and spec.performance_hint not in PERFORMANCE_HINTS:
            raise InvalidArgument(f"unknown performance hint '{spec.performance_hint}'; use one of {', '.join(PERFORMANCE_HINTS)}")
        if spec.parity_tolerance < 0:
            raise InvalidArgument("parity tolerance must be positive (a max relative difference, e.g. 0.01)")
        if spec.size < 0 or spec.size > self.settings.max_upload_bytes:
            raise ResourceExhausted(f"upload of {spec.size} bytes exceeds kvd's limit of {self.settings.max_upload_bytes} bytes (--max-upload-mb)")
        return spec

    def run(self, spec: UploadSpec, chunks: Iterable[bytes], abandon: Abandon | None = None) -> Iterator[dict[str, Any]]:
        """Progress events of one upload; ``abandon`` (set by the transport when the client leaves) stops it."""
        inherited = inherit(self.repository, spec)  # before defaults fill what the upload left unsaid
        spec = self.validate(spec)
        abandon = Abandon() if abandon is None else abandon
        stage, outcome = "receiving", "ok"
        started = time.perf_counter()
        disk.check_floor(self.repository.root, self.settings.min_free_bytes, spec.size)
        with self.slots.slot(), self._tracked(abandon):
            try:
                for event in disk.guarded_events(self._run(spec, chunks, abandon, inherited), self.repository.root):
                    stage = event["stage"].lower()
                    yield event
            except KvError as error:
                outcome = error.code.name
                metrics.UPLOAD_FAILURES.labels(stage, outcome).inc()
                raise
            except BaseException as error:  # GeneratorExit: the client went away mid-stream
                outcome = "CANCELLED" if abandon.is_set or not isinstance(error, Exception) else "INTERNAL"
                metrics.UPLOAD_FAILURES.labels(stage, outcome).inc()
                raise
            finally:
                metrics.UPLOAD_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    def _run(self, spec: UploadSpec, chunks: Iterable[bytes], abandon: Abandon, inherited: Inherited) -> Iterator[dict[str, Any]]:
        staging = self.repository.new_staging()
        published = False
        try:
            timings: dict[str, float] = {}
            started = time.perf_counter()
            source = staging / f"source{_suffix(spec.filename)}"
            digest, size = yield from self._receive(spec, chunks, source, abandon)
            timings["receive_s"] = round(time.perf_counter() - started, 3)
            fmt = formats.sniff(source, spec.filename)
            yield {"stage": "RECEIVED", "bytes_received": size, "bytes_total": size, "message": f"{size} bytes, {fmt}"}
            model_source = source
            if fmt == formats.SAVEDMODEL:
                limit = formats.unpack_limit(size, self.settings.archive_ratio, self.settings.archive_max_bytes)
                disk.check_floor(staging, self.settings.min_free_bytes, limit)
                model_source = formats.extract_savedmodel(source, staging / "savedmodel", limit)
            job = {"source": str(model_source), "format": fmt, "out_dir": str(staging), "precision": spec.precision,
                   "allow_unsafe": self.settings.allow_unsafe_deserialization, "fallback_allowed": "TF" in spec.devices,
                   "tolerance": spec.parity_tolerance or None, "preprocess": spec.preprocess or inherited.preprocess,
                   **_stage_inputs(staging / "samples", ("samples_npy", "sample_images"), spec.samples_npy, spec.sample_images),
                   **_stage_inputs(staging / "calibration", ("calibration_npy", "calibration_images"), spec.calibration_npy,
                                   spec.calibration_images)}
            result: dict[str, Any] = {}
            converting = time.perf_counter()
            conversion_outcome = "failed"
            try:
                for event in run_conversion(job, staging, self.settings.conversion_timeout_s, self.launcher, abandon):
                    if "result" in event:
                        result, conversion_outcome = event["result"], "ok"
                    else:
                        yield {"stage": event["stage"].upper(), "message": event.get("message", "")}
            finally:
                metrics.CONVERSION_SECONDS.labels(conversion_outcome).observe(time.perf_counter() - converting)
            shutil.rmtree(staging / "calibration", ignore_errors=True)  # used up; it can be larger than the model
            parity = result["parity"]
            if result.get("conversion_error"):
                yield {"stage": "CONVERTING", "message": f"{result['conversion_error']}; the original model will be served by TF"}
            elif parity["verdict"] == "fail" and not spec.force:
                raise FailedPrecondition(_disagreement(spec.precision, parity, result.get("ladder") or []))
            warnings = list(result.get("warnings", []))
            if parity and parity["verdict"] == "weak":
                warnings.append(f"the parity check is weak: {parity['weak']}; give --sample inputs like the real ones to prove the IR")
                yield {"stage": "VERIFYING", "message": warnings[-1]}
            manifest = self._manifest(spec, fmt, source, digest, size, {**result, "warnings": warnings}, timings)
            if spec.labels:
                manifest["labels"] = parse_labels(spec.labels, spec.labels_filename)
                check_count(manifest["labels"], manifest["outputs"])
            else:
                inherited.apply_labels(manifest)
            inherited.apply_rest(manifest)
            manifest["inherited"] = inherited.summary() or None  # what a re-upload took over from the previous version
            if model_source != source:
                manifest["source"]["savedmodel_dir"] = model_source.relative_to(staging).as_posix()
            yield {"stage": "LOADING", "message": f"device preference {','.join(spec.devices)}"}
            started = time.perf_counter()
            runner, backend, reason = self.manager.open_runner(staging, manifest, spec.devices, self.repository.staging_cache(staging))
            manifest["timings"]["load_s"] = round(time.perf_counter() - started, 3)
            manifest["served_by"] = {"backend": backend, "reason": reason}
            version = self.publish_and_install(staging, spec.name, manifest, runner, backend, reason, abandon)
            published = True
            log.info("model %s version %d ready: %s", spec.name, version, reason)
            message = reason + (f"; {inherited.summary()}" if inherited.summary() else "")
            yield {"stage": "READY", "name": spec.name, "version": str(version), "manifest": manifest, "message": message}
        finally:
            if not published:
                self.repository.discard_staging(staging)

    def publish_and_install(self, staging: Path, name: str, manifest: dict[str, Any], runner: Any, backend: str, reason: str,
                            abandon: Abandon) -> int:
        """Publish the staged version and make it serve, under one repository lock: a Delete of the same name runs
        wholly before or after, so it never leaves a version installed whose files are gone (a ghost)."""
        with self.repository.locked():
            try:
                abandon.check()  # the client left or kvd is stopping: do not publish what nobody will hear of
                version = self.repository.publish(staging, name, manifest)
            except BaseException:
                runner.close()
                raise
            entry = ModelVersion.from_manifest(name, version, manifest)
            entry.runner, entry.backend, entry.reason, entry.state = runner, backend, reason, READY
            self.manager.install(entry, unload_older=False)
        self.manager.sync(name)  # the policy decides which older versions stay loaded
        return version

    def rebuild(self, name: str, version: int) -> bool:
        """Re-convert a stored version's IR from its kept source upload in a converter child (its IR files were
        found damaged); the new files replace the old only if the child's parity check passed. False when there
        is nothing to rebuild from (TF-only version, source itself damaged) or the conversion failed."""
        manifest = self.repository.read_manifest(name, version)
        folder = self.repository.version_dir(name, version)
        source, ir, files = manifest.get("source") or {}, manifest.get("ir"), manifest.get("files") or {}
        if not ir or not source.get("file") or source.get("file") not in files:
            return False
        if sha256_of(folder / source["file"]) != files[source["file"]]:
            return False  # the source is damaged too
        model_source = folder / (source.get("savedmodel_dir") or source["file"])
        workdir = self.repository.new_staging("rebuild-")
        try:
            samples = folder / "samples" / "inputs.npy"
            job = {"source": str(model_source), "format": source.get("format"), "out_dir": str(workdir),
                   "precision": "auto" if manifest.get("precision_requested") == "auto" else (manifest.get("precision") or "fp32"),
                   "allow_unsafe": self.settings.allow_unsafe_deserialization, "fallback_allowed": False,
                   "tolerance": None, "preprocess": _requested_preprocess(manifest),
                   **({"samples_npy": str(samples)} if samples.is_file() else {})}
            result: dict[str, Any] = {}
            for event in run_conversion(job, workdir, self.settings.conversion_timeout_s, self.launcher):
                result = event.get("result", result)
            verdict = (result.get("parity") or {}).get("verdict", "pass" if (result.get("parity") or {}).get("passed") else "fail")
            weights = manifest.get("precision") or job["precision"]
            if not result.get("ir") or verdict == "fail" or result.get("precision", job["precision"]) != weights:
                log.warning("rebuilding %s version %d: no IR that proves itself with %s weights (got %s, parity %s)",
                            name, version, weights, result.get("precision"), verdict)
                return False  # the rebuilt IR must prove itself, with the weights the manifest describes
            names = [result["ir"]["xml"], result["ir"]["bin"]]
            if names != [ir["xml"], ir["bin"]]:
                log.warning("rebuilding %s version %d: the IR files are named %s, the manifest's %s", name, version,
                            names, [ir["xml"], ir["bin"]])
                return False
            digests = {rel: digest for rel, digest in file_digests(workdir).items() if rel in names}
            self.repository.replace_files(name, version, workdir, digests)
            return True
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _receive(self, spec: UploadSpec, chunks: Iterable[bytes], target: Path, abandon: Abandon) -> Iterator[dict[str, Any]]:
        digest = hashlib.sha256()
        size = 0
        next_report = PROGRESS_EVERY_BYTES
        with open(target, "wb") as out:
            for chunk in chunks:
                abandon.check()
                size += len(chunk)
                disk.inject("upload")
                if size > self.settings.max_upload_bytes:
                    raise ResourceExhausted(f"upload exceeds kvd's limit of {self.settings.max_upload_bytes} bytes (--max-upload-mb)")
                digest.update(chunk)
                out.write(chunk)
                if size >= next_report:
                    next_report += PROGRESS_EVERY_BYTES
                    yield {"stage": "RECEIVING", "bytes_received": size, "bytes_total": spec.size}
        if size == 0:
            raise InvalidArgument("the upload is empty; send the model file's bytes after the header")
        if spec.size and size != spec.size:
            raise InvalidArgument(f"upload ended after {size} of the {spec.size} bytes announced; the stream was cut, try again")
        if spec.sha256 and digest.hexdigest() != spec.sha256.lower():
            raise InvalidArgument("the upload's sha256 does not match the header's; the file changed or was damaged in transit")
        return digest.hexdigest(), size

    def _manifest(self, spec: UploadSpec, fmt: str, source: Path, digest: str, size: int, result: dict[str, Any],
                  timings: dict[str, float]) -> dict[str, Any]:
        return {
            "schema": 1,
            "name": spec.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {"format": fmt, "filename": Path(spec.filename).name, "file": source.name, "sha256": digest, "bytes": size},
            "inputs": result["inputs"],
            "outputs": result["outputs"],
            "precision": result.get("precision", spec.precision),
            "precision_requested": spec.precision,
            "execution_required": result.get("execution_required"),
            "ladder": result.get("ladder", []),
            "devices": spec.devices,
            "ir": result["ir"],
            "converter": result["converter"],
            "parity": result["parity"],
            "conversion_error": result.get("conversion_error"),
            "openvino_parity": result.get("openvino_parity"),  # a TF fallback's last failed IR check (parity is TF's)
            "preprocess": result["preprocess"],
            "labels": None,
            "quantization": result.get("quantization"),
            "warnings": result.get("warnings", []),
            "performance_hint": spec.performance_hint or None,
            "batching": None,
            "timings": {**timings, **result["timings"]},
        }


def _disagreement(requested: str, parity: dict[str, Any], ladder: list[dict[str, Any]]) -> str:
    """One line saying how far the IR is off and what to do instead."""
    checked, promised = parity.get("checked_max_rel_diff", parity["tolerance_max_rel_diff"]), parity["tolerance_max_rel_diff"]
    allowed = f"{checked:.3g} allowed" if checked == promised else f"{checked:.3g} allowed on the parity inputs ({promised:.3g} promised, with headroom for fresh inputs)"
    figures = f"max rel diff {parity['max_rel_diff']:.3g} > {allowed} for {parity['precision']} weights in {parity['execution_precision']} execution"
    if requested == "auto":
        tried = ", ".join(f"{r['weights']}/{r['execution']}" for r in ladder)
        return (f"the converted model disagrees with the original at every precision tried ({tried}; last: {figures}); "
                "add TF to --devices to serve the original model, or --force to accept it")
    better = "--precision auto (falls back to fp32 weights)" if requested != "fp32" else "--devices CPU,TF"
    return f"the converted model disagrees with the original: {figures}; try {better}, or --force to accept it"
