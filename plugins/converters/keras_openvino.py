"""Built-in converter: Keras (.h5, .keras) and SavedModel -> OpenVINO IR.

Runs only in the converter child process: TensorFlow is imported inside ``convert``, never at import time.
Conversion goes through ``openvino.convert_model`` on the loaded model object (``tf.saved_model.save`` output
of a Keras 3 model does not convert). The IR's ports are renamed to the Keras input/output names so the
runtime can address tensors by the names users see.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.keras_loading import (ANSI, V2_DATATYPES, keras_predictor, keras_signature, load_keras, renamed,
                                           signature_output_names)
from kvserve.plugins.types import (
    ConversionFailed,
    ConversionOptions,
    ModelRejected,
    SourceModel,
    TensorSpec,
)

def _v2_datatype(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
    name = {"object": "string"}.get(name, name)
    if name not in V2_DATATYPES:
        raise ConversionFailed(f"tensor dtype {name} is not supported by the v2 protocol mapping")
    return V2_DATATYPES[name]


def _shape(shape: Any) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


class KerasOpenVINOConverter:
    name = "keras-openvino"
    formats = ("keras-h5", "keras-v3", "savedmodel")

    def __init__(self) -> None:
        self._converted: tuple[SourceModel, Any] | None = None  # the last model converted, and its ov.Model

    def load(self, source: Path, fmt: str, options: ConversionOptions) -> SourceModel:
        if fmt == "savedmodel":
            return self._load_savedmodel(source)
        return self._load_keras(source, fmt, options)

    def convert(self, model: SourceModel, out_dir: Path, options: ConversionOptions) -> Path:
        """The IR with ``options.precision`` weights. The precision ladder asks for the same model again with other
        weights: it is converted once (``convert_model`` is most of an upload's time: ~20 s for NASNetMobile) and
        only saved again, since ``save_model`` compresses a copy (an fp32 IR saved after the fp16 one is
        byte-identical to a fresh conversion)."""
        import openvino as ov

        if self._converted is None or self._converted[0] is not model:
            self._converted = (model, self._to_openvino(model, out_dir))
        xml = out_dir / "model.xml"
        ov.save_model(self._converted[1], xml, compress_to_fp16=options.precision == "fp16")
        return xml

    def _to_openvino(self, model: SourceModel, out_dir: Path) -> Any:
        """``model`` as an ov.Model whose ports carry the Keras input and output names."""
        import openvino as ov

        keras_model = model.handle
        try:
            if model.details["kind"] == "savedmodel":
                _string_ops_extension(model)
                ov_model = ov.convert_model(str(model.handle))
            elif model.details.get("strings"):
                ov_model = self._convert_strings(model, out_dir)
            else:
                shapes = [(list(s.shape), _numpy_dtype(s.datatype)) for s in model.inputs]
                keras_model = _float32_clone(model.handle) if model.details.get("compute_dtype") == "bfloat16" else model.handle
                keras_model = _flat_outputs(_inference_mode(keras_model))
                with _traceable_keras_ops():
                    if model.details.get("named_inputs"):  # dict inputs: by name (a list would be matched by position)
                        ov_model = ov.convert_model(keras_model, input=dict(zip((s.name for s in model.inputs), shapes)))
                    else:
                        ov_model = ov.convert_model(keras_model, input=shapes)
        except ConversionFailed:
            raise
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types
            raise ConversionFailed(_conversion_message(error)) from None
        _name_ports(ov_model.inputs, model.inputs, "input")
        if model.details.get("strings"):
            _check_string_ports(ov_model)
        _name_outputs(ov_model, model.outputs, _output_keys(model, keras_model if model.details["kind"] == "keras"
                                                            and not model.details.get("strings") else model.handle))
        return ov_model

    def _convert_strings(self, model: SourceModel, out_dir: Path) -> Any:
        """String ops (TextVectorization, StringLookup) convert only from an exported SavedModel, with the
        openvino-tokenizers extension; the export is removed once converted."""
        import shutil

        import openvino as ov

        if any(spec.datatype == "BYTES" for spec in model.outputs):
            raise ConversionFailed("the model answers strings, which kvserve serves with TF (OpenVINO's parity check "
                                   "compares numbers only)")
        _string_ops_extension(model)
        export = out_dir / "string-export"
        try:
            model.handle.export(str(export), verbose=False)
            return ov.convert_model(str(export))
        finally:
            shutil.rmtree(export, ignore_errors=True)

    # --- Keras models -------------------------------------------------------------------------------
    def _load_keras(self, source: Path, fmt: str, options: ConversionOptions) -> SourceModel:
        loaded = load_keras(source, fmt, options.allow_unsafe_deserialization)
        model = loaded.model
        signature = keras_signature(model)
        details = {"kind": "keras", "loader": loaded.loader, "keras_class": type(model).__name__, "model_name": model.name,
                   "layers": len(model.layers), "input_hints": _input_hints(model, signature.inputs)}
        compute = _compute_dtype(model)
        if compute != "float32":  # e.g. mixed_float16: the reference itself is only float16-exact
            details["compute_dtype"] = compute
        if isinstance(signature.input_struct, dict):
            details["named_inputs"] = True
        if signature.renamed_outputs:  # served name -> the repeated Keras name (keras_loading.unique_names)
            details["renamed_outputs"] = signature.renamed_outputs
        if any(spec.datatype == "BYTES" for spec in signature.inputs + signature.outputs):
            details["strings"] = True
        return SourceModel(signature.inputs, signature.outputs, keras_predictor(model, signature), model, details)

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
        names = signature_output_names(signature.structured_outputs, [s.name for s in inputs])
        outputs = [TensorSpec(name, _v2_datatype(signature.structured_outputs[key].dtype), _shape(signature.structured_outputs[key].shape))
                   for name, key in names]

        def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # ``loaded`` must outlive the signature's concrete function: the closure keeps it alive.
            result = loaded.signatures["serving_default"](**{s.name: tf.constant(feeds[s.name]) for s in inputs})
            return {name: result[key].numpy() for name, key in names}

        details: dict[str, Any] = {"kind": "savedmodel", "signature": "serving_default"}
        if changed := renamed(names):
            details["renamed_outputs"] = changed
        return SourceModel(inputs, outputs, reference, source, details)


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


def _inference_mode(model: Any) -> Any:
    """The model as Keras' ``predict()`` runs it (``training=False``), when a layer would otherwise train.

    OpenVINO traces ``model(x)``, and a layer whose ``call`` defaults to ``training=True`` (RandomFlip,
    RandomRotation, RandomZoom, RandomCrop and the other augmentation layers Keras tutorials put inside the model)
    would be traced in its training branch: random ops OpenVINO cannot convert (the model fell back to TF), or
    augmentation served to every caller. The same graph, wrapped in a model that calls it with
    ``training=False``, traces what predict() computes. Other models are left exactly as they are."""
    if not any(_trains_by_default(layer) for layer in _all_layers(model)):
        return model
    from kvserve.plugins.keras_loading import input_structure

    try:
        inputs = input_structure(model)
    except (AttributeError, ValueError, IndexError):
        return model  # no symbolic inputs (a subclassed model): left to OpenVINO and the parity check
    if type(model).__module__.startswith("tf_keras"):  # a Keras 2 model is wrapped by Keras 2
        import tf_keras as keras
    else:
        import keras

    return keras.Model(inputs, model(inputs, training=False), name=f"{model.name}_inference")


@contextlib.contextmanager
def _traceable_keras_ops() -> Iterator[None]:
    """Keras 3's TensorFlow backend writes ``signbit`` (which ``keras.ops.argmax``/``argmin`` call on floats, to
    order -0.0 below 0.0) with a ``Bitcast``, an op OpenVINO cannot convert: a model answering an argmax fell back
    to TF. While OpenVINO traces the model, ``signbit`` is the same test done arithmetically (x < 0, or x == 0 and
    1/x == -inf): equal for every number, only a NaN's sign is lost. The parity check judges the result as ever."""
    try:
        from keras.src.backend.tensorflow import numpy as backend_numpy
    except ImportError:  # another Keras
        backend_numpy = None
    original = getattr(backend_numpy, "signbit", None)
    if original is None:  # nothing to change
        yield
        return
    import tensorflow as tf

    def signbit(x: Any) -> Any:
        x = tf.convert_to_tensor(x)
        if x.dtype == tf.bool:
            return tf.fill(tf.shape(x), False)
        if x.dtype.is_integer:
            return x < 0
        x = tf.cast(x, tf.float32)
        return tf.logical_or(x < 0, tf.logical_and(tf.equal(x, 0.0), tf.math.reciprocal(x) < 0))

    backend_numpy.signbit = signbit
    try:
        yield
    finally:
        backend_numpy.signbit = original


def _trains_by_default(layer: Any) -> bool:
    import inspect

    try:
        parameter = inspect.signature(layer.call).parameters.get("training")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is True


def _flat_outputs(model: Any) -> Any:
    """The model itself, or for nested outputs (a dict holding a list, lists of lists) the same graph answering a
    flat list. OpenVINO names the ports of a nested answer by its outer key only and drops all but one leaf under
    it (a dict ``{"heads": [a, b]}`` converted to one ``heads`` port)."""
    from kvserve.plugins.keras_loading import flatten, input_structure, output_structure

    try:
        structure = output_structure(model)
    except (AttributeError, ValueError):
        return model
    if not isinstance(structure, (dict, list, tuple)):
        return model
    values = list(structure.values()) if isinstance(structure, dict) else list(structure)
    if not any(isinstance(v, (dict, list, tuple)) for v in values):
        return model
    import keras

    return keras.Model(input_structure(model), [leaf for _, leaf in flatten(structure)], name=f"{model.name}_flat")


def _output_keys(model: SourceModel, converted: Any) -> list[list[str]]:
    """Per output, the names its IR port may carry, most specific first: for a Keras model the converted model's
    KerasTensor name (OpenVINO names a list answer's ports after them; unique per tensor), then its served name,
    then the name it had before ``unique_names`` (a signature key, a Keras name)."""
    renamed = model.details.get("renamed_outputs", {})
    keys = [[spec.name, renamed.get(spec.name, spec.name)] for spec in model.outputs]
    if model.details.get("kind") == "keras":
        try:
            from kvserve.plugins.keras_loading import flatten, output_structure

            leaves = flatten(output_structure(converted))
        except Exception:  # noqa: BLE001 - no symbolic outputs: served names only
            leaves = []
        if len(leaves) == len(keys):
            for found, (_, tensor) in zip(keys, leaves):
                if getattr(tensor, "name", None):
                    found.insert(0, str(tensor.name))
    return keys


def _name_outputs(ov_model: Any, specs: list[TensorSpec], keys: list[list[str]]) -> None:
    """Give every output its own IR port named exactly its served name.

    OpenVINO keeps one port for a tensor the model returns twice (and orders ports its own way), and a Result fed
    straight by a Parameter (an input returned as an output) shares that input's tensor, so naming it renames the
    input. Ports are matched by name (KerasTensor name, served name, earlier name), else by position when the
    counts agree; an output whose tensor another output or an input already holds gets its own no-op Convert, so
    its name survives ``save_model`` and compilation."""
    import openvino.opset13 as ops

    ports = list(ov_model.outputs)
    chosen: list[Any] = []
    for names in keys:
        pick = None
        for name in names:
            matches = [p for p in ports if name in p.get_names()]
            free = [p for p in matches if not any(p is c for c in chosen)]
            if matches:
                pick = (free or matches)[0]
                break
        chosen.append(pick)
    if any(p is None for p in chosen):
        if len(ports) != len(specs):
            raise ConversionFailed(f"the converted model has {len(ports)} outputs but the original has {len(specs)}")
        chosen = ports
    held = {_tensor_key(port) for port in ov_model.inputs}  # tensors an input or an earlier output names
    served: list[tuple[Any, TensorSpec]] = []  # (Result node, spec)
    fresh = []
    for port, spec in zip(chosen, specs):
        node, source = port.get_node(), port.get_node().input_value(0)
        if _tensor_key(source) in held:
            node = ops.result(ops.convert(source, source.get_element_type()))
            fresh.append(node)
        held.add(_tensor_key(source))
        served.append((node, spec))
    wanted = {node.get_friendly_name() for node, _ in served}
    for result in list(ov_model.get_results()):
        if result.get_friendly_name() not in wanted:
            ov_model.remove_result(result)
    if fresh:
        ov_model.add_results(fresh)
    for node, spec in served:
        node.output(0).get_tensor().set_names({spec.name})


def _tensor_key(port: Any) -> tuple[str, int]:
    return port.get_node().get_friendly_name(), port.get_index()


def _compute_dtype(model: Any) -> str:
    """The narrowest compute dtype of the model's layers (float16/bfloat16 under a mixed precision policy)."""
    found = {str(getattr(layer, "compute_dtype", "float32") or "float32") for layer in getattr(model, "layers", [])}
    for narrow in ("float16", "bfloat16"):
        if narrow in found:
            return narrow
    return "float32"


def _float32_clone(model: Any) -> Any:
    """The model with every mixed precision policy set to float32, sharing nothing but its weights' values.

    OpenVINO's CPU plugin cannot run the bfloat16 Convert nodes a 'mixed_bfloat16' model converts to ("Unsupported
    operation of type: Convert"); the float32 model converts and runs, and OpenVINO still executes it in bf16
    where the CPU has it. Parity then compares it with the original (bfloat16) model at bfloat16's tolerance."""
    import json

    import keras

    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))

    def to_float32(node: Any) -> None:
        if isinstance(node, dict):
            inner = node.get("config")
            if node.get("class_name") == "DTypePolicy" and isinstance(inner, dict) and str(inner.get("name", "")).startswith("mixed_"):
                inner["name"] = "float32"
            for value in node.values():
                to_float32(value)
        elif isinstance(node, list):
            for value in node:
                to_float32(value)

    to_float32(config)
    clone = keras.saving.deserialize_keras_object(config, custom_objects=_registered_objects())
    clone.set_weights(model.get_weights())
    return clone


def _registered_objects() -> dict[str, Any]:
    from kvserve.plugins.keras_loading import custom_objects

    return custom_objects()


def _string_ops_extension(model: SourceModel) -> None:
    """Teach OpenVINO TF's string ops (openvino-tokenizers registers them on import), or say it cannot."""
    if not model.details.get("strings") and not any(s.datatype == "BYTES" for s in model.inputs):
        return
    try:
        import openvino_tokenizers  # noqa: F401 - the import registers the extension
    except ImportError:
        raise ConversionFailed("string inputs need openvino-tokenizers to convert (pip install 'kvserve[server]')") from None


def _check_string_ports(ov_model: Any) -> None:
    for port in ov_model.outputs:
        if port.get_element_type().get_type_name() == "string":
            raise ConversionFailed(f"output '{port.get_any_name()}' is a string tensor, which kvserve serves with TF")


def _numpy_dtype(datatype: str) -> Any:
    if datatype == "BYTES":
        import openvino as ov

        return ov.Type.string
    return {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
            "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "BOOL": np.bool_}[datatype]


def _conversion_message(error: Exception) -> str:
    text = ANSI.sub("", str(error)).strip()
    lines = [line.strip(" -") for line in text.splitlines() if line.strip()]
    # OpenVINO lists the offending operations ("No conversion rule found for operations: Lgamma", or after a
    # failed conversion's detailed log "Conversion is failed for: Bucketize"); keep those lines and drop its
    # source locations, the log's own header and generic advice.
    keep = [line for line in lines if ("operation" in line.lower() or line.startswith("Conversion is failed for"))
            and not line.startswith(("To facilitate", "Check ")) and not line.endswith("detailed log:")]
    summary = "; ".join((keep or [l for l in lines if not l.startswith("Check ")] or lines)[:5])[:800]
    return f"OpenVINO could not convert the model: {summary}"


@hookimpl
def kvserve_register_converters(register: Any) -> None:
    register(KerasOpenVINOConverter())


