"""The converter child process: ``python -m kvserve.server.convert_child``, reading a job file's path on stdin.

TensorFlow lives only here, so a converter crash, hang or OOM costs one upload, never the daemon. Protocol:
one JSON object per line on the original stdout (library prints are sent to stderr): ``{"stage": ...}``
while working, then ``{"ok": true, "result": {...}}`` or ``{"ok": false, "kind": ..., "message": ...}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from kvserve.plugins.types import ConversionFailed, ConversionOptions, ModelRejected, UnsafeModel
from kvserve.server import faults


def _emit(channel: TextIO, payload: dict[str, Any]) -> None:
    channel.write(json.dumps(payload) + "\n")
    channel.flush()


def _corrupt_weights(bin_path: Path) -> None:
    """Test-only fault (KVSERVE_TEST_FAULT=corrupt-ir): overwrite the IR's weights with seeded noise."""
    import numpy as np

    size = bin_path.stat().st_size
    noise = np.random.default_rng(1).integers(0, 255, size=size, dtype=np.uint8)
    noise[: size // 4] = np.frombuffer(bin_path.read_bytes()[: size // 4], dtype=np.uint8)
    bin_path.write_bytes(noise.tobytes())


def _ir_predictor(xml: Path, precision: str) -> Any:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "fp32" else {}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)

    def predict(feeds: dict[str, Any]) -> dict[str, Any]:
        result = compiled(feeds)
        return {port.get_any_name(): value for port, value in result.items()}

    return predict


def run(job: dict[str, Any], channel: TextIO) -> dict[str, Any]:
    from kvserve.plugins.manager import load_plugins
    from kvserve.server.parity import parity_report, sample_feeds

    fault = os.environ.get("KVSERVE_TEST_FAULT", "")
    if fault == "converter-crash":  # test-only fault injection: a converter that dies hard
        os.kill(os.getpid(), 11)
    fmt = job["format"]
    converters = [c for c in load_plugins().converters() if fmt in c.formats]
    if not converters:
        raise ConversionFailed(f"no converter plugin accepts the format '{fmt}'")
    converter = converters[0]
    options = ConversionOptions(precision=job["precision"], allow_unsafe_deserialization=job["allow_unsafe"])
    _emit(channel, {"stage": "converting", "message": f"{converter.name}: reading the {fmt} model"})
    faults.pause("slow-convert", 30.0)  # test-only: a conversion long enough to kill kvd or the client during it
    started = time.perf_counter()
    model = converter.load(Path(job["source"]), fmt, options)
    preprocess = _preprocess(job.get("preprocess"), model.details.get("model_name", ""), model.inputs)
    signature = {"inputs": [s.to_dict() for s in model.inputs], "outputs": [s.to_dict() for s in model.outputs],
                 "preprocess": preprocess}
    _emit(channel, {"stage": "converting", "message": f"{converter.name}: {fmt} -> OpenVINO IR ({options.precision})"})
    try:
        xml = converter.convert(model, Path(job["out_dir"]), options)
    except ConversionFailed as error:
        if not job.get("fallback_allowed"):
            raise
        return {**signature, "ir": None, "conversion_error": str(error), "parity": None,
                "converter": {"name": converter.name, **_framework_versions()},
                "timings": {"convert_s": round(time.perf_counter() - started, 3)}}
    convert_s = time.perf_counter() - started
    if fault == "corrupt-ir":
        _corrupt_weights(xml.with_suffix(".bin"))
    _emit(channel, {"stage": "verifying", "message": "comparing the IR with the original on seeded inputs"})
    started = time.perf_counter()
    feeds, feeds_source = None, ""
    if job.get("samples_npy") or job.get("sample_images"):
        try:
            feeds, feeds_source = sample_feeds(model.inputs, job.get("samples_npy"), job.get("sample_images"), preprocess)
        except (ValueError, OSError) as error:
            raise ModelRejected(f"the parity samples cannot be used: {error}") from None
    try:
        report = parity_report(model.reference, _ir_predictor(xml, options.precision), model.inputs, options.precision,
                               batch=int(job.get("parity_batch", 8)), tolerance=job.get("tolerance"), feeds=feeds,
                               feeds_source=feeds_source)
    except ValueError as error:  # the IR answers in another shape or misses an output
        raise ConversionFailed(f"the converted model does not answer like the original: {error}") from None
    verify_s = time.perf_counter() - started
    import openvino as ov

    return {
        **signature,
        "ir": {"xml": xml.name, "bin": xml.with_suffix(".bin").name},
        "converter": {"name": converter.name, "openvino": ov.__version__, **_framework_versions(), **model.details},
        "parity": report,
        "timings": {"convert_s": round(convert_s, 3), "verify_s": round(verify_s, 3)},
    }


def _preprocess(requested: dict[str, Any] | None, model_name: str, inputs: list[Any]) -> dict[str, Any]:
    """The user's choice, else the Keras preprocessing of a recognised application architecture, else none."""
    from kvserve.client.preprocessing import Preprocess, image_shape, suggested_mode

    if requested is not None:
        return {**requested, "source": "user"}
    mode = suggested_mode(model_name) if len(inputs) == 1 and image_shape(inputs[0].shape) else None
    if mode:
        return {**Preprocess(mode).to_dict(), "source": f"suggested for Keras {model_name}"}
    return {**Preprocess().to_dict(), "source": "default"}


def _framework_versions() -> dict[str, str]:
    versions = {}
    for module in ("tensorflow", "keras"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "")
    return versions


def _preload() -> None:
    """Import the heavy frameworks while waiting for the job (the daemon may start this child ahead of time)."""
    import keras  # noqa: F401
    import openvino  # noqa: F401
    import tensorflow  # noqa: F401

    from kvserve.plugins.manager import load_plugins

    load_plugins()


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """Once kvd is gone (even by kill -9) we are reparented: stop, instead of writing into a staging dir it removes."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(70)


def main() -> int:
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the protocol
    _preload()
    job_path = sys.stdin.readline().strip()
    if not job_path:  # the daemon closed our stdin without a job: it is shutting down
        return 0
    job = json.loads(Path(job_path).read_text())
    try:
        _emit(channel, {"ok": True, "result": run(job, channel)})
    except UnsafeModel as error:
        _emit(channel, {"ok": False, "kind": "failed_precondition", "message": str(error)})
    except ModelRejected as error:
        _emit(channel, {"ok": False, "kind": "invalid_argument", "message": str(error)})
    except ConversionFailed as error:
        _emit(channel, {"ok": False, "kind": "failed_precondition", "message": str(error)})
    except MemoryError:
        _emit(channel, {"ok": False, "kind": "resource_exhausted", "message": "the converter ran out of memory"})
    except Exception as error:  # noqa: BLE001 - reported to the parent, traceback to stderr (the kvd log)
        import traceback

        traceback.print_exc()
        _emit(channel, {"ok": False, "kind": "internal", "message": f"converter failed: {type(error).__name__}: {error}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
