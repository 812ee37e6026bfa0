"""The converter child process: ``python -m kvserve.server.uploads.convert_child``, reading a job file's path on stdin.

TensorFlow (and NNCF, for int8) lives only here, so a converter crash, hang or OOM costs one upload, never the
daemon. It speaks the protocol of ``kvserve.server.uploads.child``: ``{"stage": ...}`` events while working, then the
result or a classified error.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from kvserve.plugins.types import ConversionFailed, ConversionOptions, ModelRejected, UnsafeModel
from kvserve.server.ops import faults
from kvserve.server.uploads.child import child_main, emit


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


def converter_for(fmt: str) -> Any:
    """The first converter plugin that reads ``fmt``."""
    from kvserve.plugins.manager import load_plugins

    converters = [c for c in load_plugins().converters() if fmt in c.formats]
    if not converters:
        raise ConversionFailed(f"no converter plugin accepts the format '{fmt}'")
    return converters[0]


def run(job: dict[str, Any], channel: TextIO) -> dict[str, Any]:
    from kvserve.server.uploads.parity import parity_report, sample_feeds

    fault = os.environ.get("KVSERVE_TEST_FAULT", "")
    if fault == "converter-crash":  # test-only fault injection: a converter that dies hard
        os.kill(os.getpid(), 11)
    fmt = job["format"]
    converter = converter_for(fmt)
    options = ConversionOptions(precision=job["precision"], allow_unsafe_deserialization=job["allow_unsafe"])
    emit(channel, {"stage": "converting", "message": f"{converter.name}: reading the {fmt} model"})
    faults.pause("slow-convert", 30.0)  # test-only: a conversion long enough to kill kvd or the client during it
    started = time.perf_counter()
    model = converter.load(Path(job["source"]), fmt, options)
    preprocess = _preprocess(job.get("preprocess"), model.details.get("model_name", ""), model.inputs)
    signature = {"inputs": [s.to_dict() for s in model.inputs], "outputs": [s.to_dict() for s in model.outputs],
                 "preprocess": preprocess}
    weights = "fp32, then int8" if options.precision == "int8" else options.precision
    emit(channel, {"stage": "converting", "message": f"{converter.name}: {fmt} -> OpenVINO IR ({weights})"})
    try:
        xml = converter.convert(model, Path(job["out_dir"]), options)  # int8: FP32 weights, quantized below
    except ConversionFailed as error:
        if not job.get("fallback_allowed"):
            raise
        return {**signature, "ir": None, "conversion_error": str(error), "parity": None,
                "converter": {"name": converter.name, **_framework_versions()},
                "timings": {"convert_s": round(time.perf_counter() - started, 3)}}
    convert_s = time.perf_counter() - started
    if fault == "corrupt-ir":
        _corrupt_weights(xml.with_suffix(".bin"))
    feeds, feeds_source = None, ""
    if job.get("samples_npy") or job.get("sample_images"):
        try:
            feeds, feeds_source = sample_feeds(model.inputs, job.get("samples_npy"), job.get("sample_images"), preprocess)
        except (ValueError, OSError) as error:
            raise ModelRejected(f"the parity samples cannot be used: {error}") from None
    extra: dict[str, Any] = {}
    if options.precision == "int8":
        started = time.perf_counter()
        calibration, extra = _quantize(channel, model, xml, job, preprocess)
        extra["timings"] = {"quantize_s": round(time.perf_counter() - started, 3)}
        if feeds is None:  # INT8 parity is judged on the data it was calibrated for
            feeds, feeds_source = calibration, f"calibration set: {extra['quantization']['calibration']}"
        from kvserve.server.uploads.quantize import calibration_warnings

        advice = calibration_warnings(model.reference, calibration, bool(job.get("calibration_images")), preprocess)
        for warning in advice:
            emit(channel, {"stage": "quantizing", "message": warning})
        extra["warnings"] = [*extra.get("warnings", []), *advice]
    emit(channel, {"stage": "verifying", "message": f"comparing the IR with the original on {feeds_source or 'seeded inputs'}"})
    started = time.perf_counter()
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
        **extra,
        "ir": {"xml": xml.name, "bin": xml.with_suffix(".bin").name},
        "converter": {"name": converter.name, "openvino": ov.__version__, **_framework_versions(), **model.details},
        "parity": report,
        "timings": {"convert_s": round(convert_s, 3), **extra.get("timings", {}), "verify_s": round(verify_s, 3)},
    }


def _preprocess(requested: dict[str, Any] | None, model_name: str, inputs: list[Any]) -> dict[str, Any]:
    """The user's choice, else the Keras preprocessing of a recognised application architecture, else none."""
    from kvserve.proto.images import Preprocess, image_shape, suggested_mode

    if requested is not None:
        return {**requested, "source": "user"}
    mode = suggested_mode(model_name) if len(inputs) == 1 and image_shape(inputs[0].shape) else None
    if mode:
        return {**Preprocess(mode).to_dict(), "source": f"suggested for Keras {model_name}"}
    return {**Preprocess().to_dict(), "source": "default"}
def _quantize(channel: TextIO, model: Any, xml: Path, job: dict[str, Any], preprocess: dict[str, Any]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replace the FP32 IR at ``xml`` by its INT8 quantization; returns (calibration feeds, manifest fields)."""
    from kvserve.server.uploads.quantize import SYNTHETIC_WARNING, calibration_feeds, quantize_ir

    feeds, source, synthetic = calibration_feeds(model.inputs, job.get("calibration_npy"), job.get("calibration_images"), preprocess)
    if synthetic:
        emit(channel, {"stage": "quantizing", "message": SYNTHETIC_WARNING})
    emit(channel, {"stage": "quantizing", "message": f"NNCF post-training quantization, calibrated on {source}"})
    fp32_xml = xml.with_name("model-fp32.xml")
    xml.rename(fp32_xml)
    xml.with_suffix(".bin").rename(fp32_xml.with_suffix(".bin"))
    details = quantize_ir(fp32_xml, feeds, xml)
    fp32_xml.unlink()
    fp32_xml.with_suffix(".bin").unlink()
    quantization = {**details, "calibration": source, "synthetic_calibration": synthetic}
    return feeds, {"quantization": quantization, "warnings": [SYNTHETIC_WARNING] if synthetic else []}


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


def main() -> int:
    errors = [(UnsafeModel, "failed_precondition"), (ModelRejected, "invalid_argument"), (ConversionFailed, "failed_precondition")]
    return child_main(run, errors, worker="converter", preload=_preload)


if __name__ == "__main__":
    raise SystemExit(main())
