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


def _ir_predictor(xml: Path, precision: str, required: str | None = None) -> tuple[Any, str]:
    """The IR compiled on the CPU as kvd will serve it, and the precision it really executes in."""
    import openvino as ov

    from kvserve.plugins.backends.openvino_devices import executed_precision, execution_config, openvino_inputs

    compiled = ov.Core().compile_model(str(xml), "CPU", execution_config(precision, required))

    def predict(feeds: dict[str, Any]) -> dict[str, Any]:
        result = compiled(openvino_inputs(feeds))
        return {port.get_any_name(): value for port, value in result.items()}

    return predict, executed_precision(compiled)


def converter_for(fmt: str) -> Any:
    """The first converter plugin that reads ``fmt``."""
    from kvserve.plugins.manager import load_plugins

    converters = [c for c in load_plugins().converters() if fmt in c.formats]
    if not converters:
        raise ConversionFailed(f"no converter plugin accepts the format '{fmt}'")
    return converters[0]


# The precision ladder: (weights stored in the IR, execution precision required; None = the device's fastest).
# ``auto`` climbs it until parity passes. An explicit precision fixes the weights the user chose, never more: fp16
# weights still step from the device's fastest execution to f32 (the user chose the weights, not bf16; the digits
# CNN's fp16 weights drift 0.022 of their range in bf16 on a Zen 4 and 1e-3 in f32).
LADDERS: dict[str, list[tuple[str, str | None]]] = {
    "auto": [("fp16", None), ("fp16", "f32"), ("fp32", "f32")],
    "fp16": [("fp16", None), ("fp16", "f32")],
    "fp32": [("fp32", "f32")],
    "int8": [("int8", None)],
}


def run(job: dict[str, Any], channel: TextIO) -> dict[str, Any]:
    fault = os.environ.get("KVSERVE_TEST_FAULT", "")
    if fault == "converter-crash":  # test-only fault injection: a converter that dies hard
        os.kill(os.getpid(), 11)
    fmt = job["format"]
    converter = converter_for(fmt)
    requested = job["precision"]
    options = ConversionOptions(precision=requested, allow_unsafe_deserialization=job["allow_unsafe"])
    emit(channel, {"stage": "converting", "message": f"{converter.name}: reading the {fmt} model"})
    faults.pause("slow-convert", 30.0)  # test-only: a conversion long enough to kill kvd or the client during it
    started = time.perf_counter()
    model = converter.load(Path(job["source"]), fmt, options)
    preprocess = _preprocess(job.get("preprocess"), model.details.get("model_name", ""), model.inputs)
    signature = {"inputs": [s.to_dict() for s in model.inputs], "outputs": [s.to_dict() for s in model.outputs],
                 "preprocess": preprocess}
    describe = {"name": converter.name, **_framework_versions(), **model.details}
    try:
        try:
            climbed = _climb(job, channel, converter, model, preprocess, requested, started)
        except (ConversionFailed, ModelRejected):
            raise
        except Exception as error:  # noqa: BLE001 - a model kind the converter mishandles: TF may still serve it
            raise ConversionFailed(f"{converter.name} failed on this model ({type(error).__name__}: {_first_line(error)})") from None
        return {**signature, **climbed, "converter": {**describe, "openvino": climbed.pop("openvino")}}
    except ConversionFailed as error:
        if not job.get("fallback_allowed"):
            raise
        if fmt == "savedmodel" and not job["allow_unsafe"]:  # its graph would run as stored, file ops and all
            from kvserve.plugins.backends.tensorflow_fallback import SAVEDMODEL_OPT_IN

            raise UnsafeModel(f"{error}; {SAVEDMODEL_OPT_IN}") from None
        emit(channel, {"stage": "converting", "message": f"{error}; falling back to the TF backend"})
        tf_parity, warnings = _tf_parity(job, channel, model, preprocess)
        return {**signature, "ir": None, "conversion_error": str(error), "parity": tf_parity,
                "openvino_parity": getattr(error, "parity", None), "warnings": warnings,
                "ladder": getattr(error, "ladder", []), "precision_requested": requested, "converter": describe,
                "precision": "fp32", "timings": {"convert_s": round(time.perf_counter() - started, 3)}}


def _tf_parity(job: dict[str, Any], channel: TextIO, model: Any, preprocess: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """What the TF backend will serve, checked like an IR: the very runner it loads (the original model behind a
    ``tf.function``, float32) against the original called as Keras calls it, on the same realistic inputs. Its
    tolerance is fp32's in f32 (or the model's own float16/bfloat16 compute dtype's). A failure refuses
    the upload in one line: graph and eager execution of this very model differ, so no answer kvd serves could be
    promised (a user ``--tolerance`` accepts it)."""
    from kvserve.plugins.backends.tensorflow_fallback import load_tensorflow_runner
    from kvserve.server.uploads import parity_inputs
    from kvserve.server.uploads.parity import parity_report

    out_dir, source = Path(job["out_dir"]), Path(job["source"])
    where = {"format": job["format"]}
    where.update({"savedmodel_dir": source.relative_to(out_dir).as_posix(), "file": source.name} if job["format"] == "savedmodel"
                 else {"file": source.relative_to(out_dir).as_posix()})
    try:
        chosen = parity_inputs.choose(model.reference, model.inputs, int(job.get("parity_batch") or parity_inputs.parity_rows(model.inputs)),
                                      preprocess, model.details.get("input_hints", {}))
        runner = load_tensorflow_runner(out_dir, {"source": where, "converter": {"loader": model.details.get("loader")}},
                                        model.inputs, model.outputs, bool(job["allow_unsafe"]))
        report = parity_report(model.reference, runner.infer, model.inputs, "fp32", "f32", tolerance=job.get("tolerance"),
                               feeds=chosen.feeds, feeds_source=chosen.description, reference_outputs=chosen.reference_outputs,
                               weak=chosen.weak, compute=model.details.get("compute_dtype", "float32"))
    except (ModelRejected, UnsafeModel):
        raise
    except Exception as error:  # noqa: BLE001 - the TF backend reports its own load failure when kvd loads it
        return None, [f"the TF backend could not be checked against the original model: {_first_line(error)}"]
    report["backend"] = "TF"
    emit(channel, {"stage": "verifying", "message": f"TF backend vs the original: {report['verdict']}, max rel diff "
                                                   f"{report['max_rel_diff']:.3g} on {chosen.description}"})
    if report["verdict"] == "fail":
        raise ModelRejected(unstable_message(report))
    return report, []


def unstable_message(report: dict[str, Any]) -> str:
    """One line for a model even its own framework cannot reproduce: TF's graph run of the original disagrees with
    Keras's call beyond float32 rounding, so its weights amplify tiny differences and no backend can be held to it."""
    return (f"the model is numerically unstable: TensorFlow running the original model itself answers "
            f"{report['max_rel_diff']:.3g} (max rel diff) away from Keras's own call, over the "
            f"{report['checked_max_rel_diff']:.3g} float32 allows; its weights amplify tiny input changes (check its "
            "BatchNorm statistics), or upload with --tolerance to accept that")


def _climb(job: dict[str, Any], channel: TextIO, converter: Any, model: Any, preprocess: dict[str, Any], requested: str,
           started: float) -> dict[str, Any]:
    """Convert and verify rung by rung; the first rung whose parity passes (or is weak at the most exact rung)
    wins. Raises ConversionFailed when OpenVINO cannot convert or run the model, or (auto, TF allowed) no rung
    passes, so the caller can fall back to TF."""
    from kvserve.server.uploads import parity_inputs
    from kvserve.server.uploads.parity import parity_report, sample_feeds

    import openvino as ov

    out_dir = Path(job["out_dir"])
    user = None
    if job.get("samples_npy") or job.get("sample_images"):
        try:
            user = sample_feeds(model.inputs, job.get("samples_npy"), job.get("sample_images"), preprocess)
        except (ValueError, OSError) as error:
            raise ModelRejected(f"the parity samples cannot be used: {error}") from None
    hints = model.details.get("input_hints", {})
    extra: dict[str, Any] = {"timings": {}}
    ladder, chosen, converted = [], None, {}
    convert_s = verify_s = 0.0
    chosen_inputs = None
    for weights, required in LADDERS[requested]:
        if ladder and required and ladder[-1]["weights"] == weights and ladder[-1]["execution"] == required:
            # The device's default already executed these weights in ``required`` (f32 on a CPU without bf16):
            # the rung would compile and judge the very same thing again. Recorded, not re-run.
            rung = {**ladder[-1], "same_as": "the previous rung (the device's default execution is already "
                                             f"{required})"}
            ladder.append(rung)
            if (weights, required) != LADDERS[requested][-1]:
                emit(channel, {"stage": "verifying", "message": f"{_rung_name(weights, required)} is the rung just tried; trying the next precision"})
            else:
                break
            continue
        if weights not in converted:
            step = time.perf_counter()
            emit(channel, {"stage": "converting", "message": f"{converter.name}: {job['format']} -> OpenVINO IR "
                                                            f"({'fp32, then int8' if weights == 'int8' else weights} weights)"})
            try:
                xml = converter.convert(model, out_dir, ConversionOptions(precision=weights, allow_unsafe_deserialization=job["allow_unsafe"]))
            except (ConversionFailed, ModelRejected):
                raise
            except Exception as error:  # noqa: BLE001 - a converter plugin's own failure is a conversion failure
                raise ConversionFailed(f"{converter.name} could not convert the model: {_first_line(error)}") from None
            if os.environ.get("KVSERVE_TEST_FAULT", "") == "corrupt-ir":
                _corrupt_weights(xml.with_suffix(".bin"))
            convert_s += time.perf_counter() - step
            if weights == "int8":
                step = time.perf_counter()
                calibration, extra = _quantize(channel, model, xml, job, preprocess)
                extra["timings"] = {"quantize_s": round(time.perf_counter() - step, 3)}
                if user is None:  # INT8 parity is judged on the data it was calibrated for
                    user = (calibration, f"calibration set: {extra['quantization']['calibration']}")
                from kvserve.server.uploads.quantize import calibration_warnings

                advice = calibration_warnings(model.reference, calibration, bool(job.get("calibration_images")), preprocess)
                for warning in advice:
                    emit(channel, {"stage": "quantizing", "message": warning})
                extra["warnings"] = [*extra.get("warnings", []), *advice]
            converted = {weights: xml}
        step = time.perf_counter()
        if chosen_inputs is None:
            try:
                chosen_inputs = parity_inputs.choose(model.reference, model.inputs, int(job.get("parity_batch") or parity_inputs.parity_rows(model.inputs)), preprocess,
                                                     hints, user)
            except ValueError as error:
                raise ModelRejected(f"the parity check cannot run the original model: {error}") from None
        emit(channel, {"stage": "verifying", "message": f"comparing the IR ({_rung_name(weights, required)}) with the original "
                                                       f"on {chosen_inputs.description}"})
        try:
            predict, execution = _ir_predictor(converted[weights], weights, required)
            report = parity_report(model.reference, predict, model.inputs, weights, execution,
                                   tolerance=job.get("tolerance"), feeds=chosen_inputs.feeds,
                                   feeds_source=chosen_inputs.description, reference_outputs=chosen_inputs.reference_outputs,
                                   weak=chosen_inputs.weak, compute=model.details.get("compute_dtype", "float32"))
        except ValueError as error:  # the IR answers in another shape or misses an output
            raise ConversionFailed(f"the converted model does not answer like the original: {error}") from None
        except RuntimeError as error:  # OpenVINO could not compile or run the IR
            raise ConversionFailed(f"OpenVINO could not run the converted model: {_first_line(error)}") from None
        verify_s += time.perf_counter() - step
        if chosen_inputs.tried:
            report["inputs_tried"] = chosen_inputs.tried
        rung = {"weights": weights, "execution": execution, "verdict": report["verdict"],
                "max_rel_diff": report["max_rel_diff"], "tolerance": report["tolerance_max_rel_diff"]}
        ladder.append(rung)
        chosen = (weights, required, report)
        last = (weights, required) == LADDERS[requested][-1]
        if report["verdict"] == "pass" or (report["verdict"] == "weak" and last):
            break
        if not last:
            why = "proves nothing (weak parity inputs)" if report["verdict"] == "weak" else (
                f"max rel diff {report['max_rel_diff']:.3g} > {report['checked_max_rel_diff']:.3g}")
            rung["why_next"] = why
            emit(channel, {"stage": "verifying", "message": f"{_rung_name(weights, required)} {why}; trying the next precision"})
    weights, required, report = chosen
    if requested == "auto" and report["verdict"] == "fail" and job.get("fallback_allowed"):
        failed = ConversionFailed(f"parity failed at every precision tried ({'; '.join(_rung_line(r) for r in ladder)})")
        failed.ladder, failed.parity = ladder, report  # kept in the manifest beside the TF fallback
        raise failed
    return {**extra,
            "ir": {"xml": converted[weights].name, "bin": converted[weights].with_suffix(".bin").name},
            "precision": weights,
            "precision_requested": requested,
            "execution_required": required,
            "ladder": ladder,
            "parity": report,
            "openvino": ov.__version__,
            "timings": {"convert_s": round(convert_s, 3), **extra.get("timings", {}), "verify_s": round(verify_s, 3),
                        "total_s": round(time.perf_counter() - started, 3)}}


def _rung_name(weights: str, required: str | None) -> str:
    return f"{weights} weights, {required or 'the device default'} execution"


def _rung_line(rung: dict[str, Any]) -> str:
    return f"{rung['weights']} weights in {rung['execution']}: {rung['verdict']}, max rel diff {rung['max_rel_diff']:.3g}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith(("Exception from", "Check '"))]
    return (lines[0] if lines else type(error).__name__)[:300]


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
