"""Built-in converter: Keras (.h5, .keras) and SavedModel -> OpenVINO IR.

Runs only in the converter child process: TensorFlow is imported inside ``convert``, never at import time.
Conversion goes through ``openvino.convert_model`` on the loaded model object (``tf.saved_model.save`` output
of a Keras 3 model does not convert). The IR's ports are renamed to the Keras input/output names so the
runtime can address tensors by the names users see.
"""

from __future__ import annotations


from pathlib import Path
from typing import Any

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import (
    ConversionFailed,
    ConversionOptions,
    ModelRejected,
    SourceModel,
    TensorSpec,
    UnsafeModel,
)

UNSAFE_HINT = (
    "it contains a Lambda layer, whose Python code would run on the server; start kvd with "
    "--allow-unsafe-deserialization only if you trust this model"
)


def _v2_datatype(dtype: Any) -> str:
    name = np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
    table = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int8": "INT8", "int16": "INT16",
             "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16", "bool": "BOOL"}
    if name not in table:
        raise ConversionFailed(f"tensor dtype {name} is not supported by the v2 protocol mapping")
    return table[name]


def _shape(shape: Any) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _h5_has_lambda(path: Path) -> bool:
    """Look for Lambda layers in a legacy .h5's stored config without deserializing anything."""
    import h5py

    with h5py.File(path, "r") as handle:
        config = handle.attrs.get("model_config")
    if config is None:
        return False
    text = config.decode() if isinstance(config, bytes) else str(config)
    return '"class_name": "Lambda"' in text or "'class_name': 'Lambda'" in text


class KerasOpenVINOConverter:
    name = "keras-openvino"
    formats = ("keras-h5", "keras-v3", "savedmodel")

    def load(self, source: Path, fmt: str, options: ConversionOptions) -> SourceModel:
        if fmt == "savedmodel":
            return self._load_savedmodel(source)
        return self._load_keras(source, fmt, options)

    def convert(self, model: SourceModel, out_dir: Path, options: ConversionOptions) -> Path:
        import openvino as ov

        try:
            if model.details["kind"] == "savedmodel":
                ov_model = ov.convert_model(str(model.handle))
            else:
                shapes = [(list(s.shape), _numpy_dtype(s.datatype)) for s in model.inputs]
                ov_model = ov.convert_model(model.handle, input=shapes)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types
            raise ConversionFailed(_conversion_message(error)) from None
        _name_ports(ov_model.inputs, model.inputs, "input")
        _name_ports(ov_model.outputs, model.outputs, "output")
        xml = out_dir / "model.xml"
        ov.save_model(ov_model, xml, compress_to_fp16=options.precision == "fp16")
        return xml

    # --- Keras models -------------------------------------------------------------------------------
    def _load_keras(self, source: Path, fmt: str, options: ConversionOptions) -> SourceModel:
        import keras

        if fmt == "keras-h5":
            try:
                if not options.allow_unsafe_deserialization and _h5_has_lambda(source):
                    raise UnsafeModel(f"refused to load the model: {UNSAFE_HINT}")
            except OSError as error:
                raise ModelRejected(f"could not read the .h5 file ({error}); check that the upload is complete") from None
        try:
            model = keras.models.load_model(source, compile=False, safe_mode=not options.allow_unsafe_deserialization)
        except ValueError as error:
            if "Lambda" in str(error) or "unsafe" in str(error).lower():
                raise UnsafeModel(f"refused to load the model: {UNSAFE_HINT}") from None
            raise ModelRejected(f"could not load the Keras model: {error}") from None
        except (TypeError, OSError, KeyError) as error:
            kind = ".h5" if fmt == "keras-h5" else ".keras"
            raise ModelRejected(f"could not load the {kind} model ({type(error).__name__}: {error}); check that the file is a complete Keras model and that custom layers are registered") from None
        inputs = [TensorSpec(t.name, _v2_datatype(t.dtype), _shape(t.shape)) for t in model.inputs]
        output_names = list(getattr(model, "output_names", None) or [t._keras_history.operation.name for t in model.outputs])  # noqa: SLF001
        outputs = [TensorSpec(n, _v2_datatype(t.dtype), _shape(t.shape)) for n, t in zip(output_names, model.outputs)]

        def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = model([feeds[s.name] for s in inputs] if len(inputs) > 1 else feeds[inputs[0].name], training=False)
            result = result if isinstance(result, (list, tuple)) else [result]
            return {spec.name: np.asarray(value) for spec, value in zip(outputs, result)}

        return SourceModel(inputs, outputs, reference, model, {"kind": "keras", "keras_class": type(model).__name__, "model_name": model.name,
                                                          "layers": len(model.layers), "input_hints": _input_hints(model, inputs)})

    # --- SavedModel ---------------------------------------------------------------------------------
    def _load_savedmodel(self, source: Path) -> SourceModel:
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(source))
            signature = loaded.signatures["serving_default"]
        except KeyError:
            raise ModelRejected("the SavedModel has no 'serving_default' signature; export it with model.export(dir)") from None
        except Exception as error:  # noqa: BLE001 - TF raises many types for a bad SavedModel
            raise ModelRejected(f"could not load the SavedModel: {error}") from None
        input_specs = signature.structured_input_signature[1]
        inputs = [TensorSpec(name, _v2_datatype(spec.dtype), _shape(spec.shape)) for name, spec in sorted(input_specs.items())]
        outputs = [TensorSpec(name, _v2_datatype(spec.dtype), _shape(spec.shape)) for name, spec in sorted(signature.structured_outputs.items())]

        def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # ``loaded`` must outlive the signature's concrete function: the closure keeps it alive.
            result = loaded.signatures["serving_default"](**{s.name: tf.constant(feeds[s.name]) for s in inputs})
            return {name: value.numpy() for name, value in result.items()}

        return SourceModel(inputs, outputs, reference, source, {"kind": "savedmodel", "signature": "serving_default"})


def _all_layers(model: Any) -> list[Any]:
    """Every layer, nested models' included."""
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def _input_hints(model: Any, inputs: list[TensorSpec]) -> dict[str, dict[str, Any]]:
    """What real inputs look like, for parity inputs that prove something (server/uploads/parity_inputs.py):
    integer inputs feeding an Embedding are tokens below its ``input_dim``; string inputs get a TextVectorization
    or StringLookup vocabulary; image inputs of a model that rescales pixels itself (Rescaling by ~1/255 or
    1/127.5, as EfficientNet, ConvNeXt and MobileNetV3 do) are 0-255 pixels."""
    layers = _all_layers(model)
    kinds = {type(layer).__name__ for layer in layers}
    vocabularies = [int(layer.input_dim) for layer in layers if type(layer).__name__ == "Embedding"]
    words: list[str] = []
    for layer in layers:
        if type(layer).__name__ in ("TextVectorization", "StringLookup") and hasattr(layer, "get_vocabulary"):
            try:
                words = [str(w) for w in layer.get_vocabulary()[:2000]]
            except Exception:  # noqa: BLE001 - an unadapted layer has no vocabulary
                words = []
            if words:
                break
    rescales = [float(np.mean(getattr(layer, "scale", 1.0))) for layer in layers if type(layer).__name__ == "Rescaling"]
    pixels = any(0 < s <= 1 / 100 for s in rescales) or "Normalization" in kinds and len(rescales) > 0
    hints: dict[str, dict[str, Any]] = {}
    for spec in inputs:
        if spec.datatype.startswith(("INT", "UINT")) and vocabularies:
            hints[spec.name] = {"kind": "tokens", "high": min(vocabularies)}
        elif spec.datatype == "BYTES":
            hints[spec.name] = {"kind": "strings", "vocabulary": words}
        elif spec.datatype.startswith("FP") and len(spec.shape) == 4 and pixels:
            hints[spec.name] = {"kind": "pixels"}
    return hints


def _name_ports(ports: list[Any], specs: list[TensorSpec], kind: str) -> None:
    """Give each IR port exactly its signature name: by name where OpenVINO kept it, else by position."""
    if len(ports) != len(specs):
        raise ConversionFailed(f"the converted model has {len(ports)} {kind}s but the original has {len(specs)}")
    by_name = {name: port for port in ports for name in port.get_names()}
    ordered = [by_name.get(spec.name) for spec in specs]
    if any(p is None for p in ordered) or len({id(p) for p in ordered}) != len(ordered):
        ordered = list(ports)
    for port, spec in zip(ordered, specs):
        port.get_tensor().set_names({spec.name})


def _numpy_dtype(datatype: str) -> Any:
    return {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
            "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "BOOL": np.bool_}[datatype]


def _conversion_message(error: Exception) -> str:
    text = str(error).strip()
    lines = [line.strip(" -") for line in text.splitlines() if line.strip()]
    # OpenVINO lists the offending operations ("No conversion rule found for operations: Lgamma"); keep those
    # lines and drop its source locations and generic advice.
    keep = [line for line in lines if "operation" in line.lower() and not line.startswith("To facilitate")]
    summary = "; ".join((keep or [l for l in lines if not l.startswith("Check ")] or lines)[:5])[:800]
    return f"OpenVINO could not convert the model: {summary}"


@hookimpl
def kvserve_register_converters(register: Any) -> None:
    register(KerasOpenVINOConverter())


