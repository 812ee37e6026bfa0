"""Loading an uploaded Keras model the same way everywhere it is loaded (converter child, TF backend).

Why one module: the converter and the TF backend must agree on how a model is read (custom objects, the
tf_keras fallback for Keras 2 ``.h5`` files, the Lambda refusal) and on the names of its inputs and outputs
(dict keys and Keras output names, never positions), or the TF backend would serve a different signature than
the one the manifest records. It imports Keras only inside its functions and holds no server state, so it runs
in any child process.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from kvserve.plugins.types import ModelRejected, TensorSpec, UnsafeModel

CUSTOM_OBJECTS_ENV = "KVSERVE_CUSTOM_OBJECTS"  # comma-separated modules (kvd --custom-objects exports it)
HOOK = "kvserve_register_keras_objects"
UNSAFE_HINT = ("whose Python code would run on the server; start kvd with --allow-unsafe-deserialization only if "
               "you trust this model")
CUSTOM_HINT = ("register it with a kvserve plugin (kvserve_register_keras_objects) or start kvd with "
               "--custom-objects MODULE")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
MISSING_CLASS = (
    re.compile(r"Could not locate (class|function) '([^']+)'"),
    re.compile(r"Unknown (layer|object|class|activation|loss|metric|initializer|regularizer|constraint)[^'\"]*['\"]([^'\"]+)['\"]"),
)

# v2 datatypes of the tensor dtypes Keras models take and give (strings travel as v2 BYTES).
V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "bfloat16": "FP32", "int8": "INT8",
                "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16",
                "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL", "string": "BYTES", "object": "BYTES"}


# --- custom objects ---------------------------------------------------------------------------------------
def custom_object_modules() -> list[str]:
    """The trusted modules kvd was started with (``--custom-objects``), from the environment it exported."""
    return [m.strip() for m in os.environ.get(CUSTOM_OBJECTS_ENV, "").split(",") if m.strip()]


def custom_objects() -> dict[str, Any]:
    """Every class and function registered by plugins (hook ``kvserve_register_keras_objects``) and by the
    ``--custom-objects`` modules (imported here; a module may define the same hook, or register its classes with
    ``keras.saving.register_keras_serializable`` when imported)."""
    found: dict[str, Any] = {}

    def register(obj: Any, name: str | None = None) -> None:
        found[name or getattr(obj, "__name__", str(obj))] = obj
        try:
            import keras

            found.setdefault(keras.saving.get_registered_name(obj), obj)  # "package>Class" as saved configs name it
        except Exception:  # noqa: BLE001 - not a Keras object: keep the plain name only
            pass

    for module_name in custom_object_modules():
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001 - the operator's module is broken: say which
            raise ModelRejected(f"the custom objects module '{module_name}' (kvd --custom-objects) failed to import: "
                                f"{type(error).__name__}: {one_line(error)}") from None
        hook = getattr(module, HOOK, None)
        if callable(hook):
            try:
                hook(register)
            except Exception as error:  # noqa: BLE001 - the operator's module is broken: say which
                raise ModelRejected(f"the custom objects module '{module_name}' (kvd --custom-objects) failed in {HOOK}: "
                                    f"{type(error).__name__}: {one_line(error)}") from None
    from kvserve.plugins.manager import load_plugins

    load_plugins().keras_objects(register)
    return found


# --- messages ---------------------------------------------------------------------------------------------
def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error as one short line: no ANSI codes, no config or array dumps, no traceback."""
    text = ANSI.sub("", str(error))
    for cut in ("Full object config", "Received: config", "config=", "Exception encountered", "\n\n"):
        if cut in text:
            text = text[: text.index(cut)]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = " ".join(lines) if lines else type(error).__name__
    line = re.sub(r"array\(\[.*?\]\)", "array(...)", line)
    line = re.sub(r"\[\[[^\]]{40,}\]\]", "[...]", line)
    return line.rstrip(" .:;,")[:limit]


def missing_class(error: BaseException) -> str | None:
    """The custom class or function Keras could not find, when that is why loading failed."""
    text = ANSI.sub("", str(error))
    for pattern in MISSING_CLASS:
        match = pattern.search(text)
        if match:
            return match.group(2).split(">")[-1]
    return None


def missing_class_message(name: str) -> str:
    return f"layer class '{name}' is not known to kvd; {CUSTOM_HINT}"


# --- Lambda layers ----------------------------------------------------------------------------------------
def stored_config(path: Path, fmt: str) -> Any:
    """The model's architecture as stored in the file, read without deserializing anything (None if absent)."""
    try:
        if fmt == "keras-h5":
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
        else:
            with zipfile.ZipFile(path) as archive:
                raw = archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ModelRejected(f"could not read the model file ({one_line(error)}); check that the upload is complete") from None
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None


def _layers_of_class(config: Any, class_name: str) -> Iterator[str]:
    if isinstance(config, dict):
        if config.get("class_name") == class_name:
            inner = config.get("config")
            yield str(inner.get("name", "?")) if isinstance(inner, dict) else "?"
        for value in config.values():
            yield from _layers_of_class(value, class_name)
    elif isinstance(config, list):
        for value in config:
            yield from _layers_of_class(value, class_name)


def refuse_lambda(config: Any) -> None:
    """UnsafeModel naming the Lambda layers, if the stored architecture has any."""
    names = list(dict.fromkeys(_layers_of_class(config, "Lambda")))
    if names:
        which = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UnsafeModel(f"refused to load the model: Lambda layer {which} {UNSAFE_HINT}")


# --- loading ----------------------------------------------------------------------------------------------
@dataclass
class LoadedKeras:
    model: Any
    loader: str  # "keras" (Keras 3) or "tf_keras" (Keras 2, for .h5 files Keras 3 cannot read)


def load_keras(path: Path, fmt: str, allow_unsafe: bool, loader: str | None = None) -> LoadedKeras:
    """Load a .h5 / .keras model: Keras 3, then tf_keras for a .h5 Keras 3 cannot read. ``loader`` forces one
    (the TF backend reloads with the loader the converter used). Raises UnsafeModel or ModelRejected with one
    line naming the Lambda layer, the missing custom class, or Keras's own reason."""
    if not allow_unsafe:
        refuse_lambda(stored_config(path, fmt))
    objects = custom_objects()
    if loader == "tf_keras":
        return LoadedKeras(_load_tf_keras(path, objects), "tf_keras")
    try:
        import keras

        model = keras.models.load_model(path, compile=False, safe_mode=not allow_unsafe, custom_objects=objects)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a model it cannot read
        first = error
    else:
        return LoadedKeras(functional_view(model), "keras")
    if _missing := missing_class(first):
        raise ModelRejected(missing_class_message(_missing)) from None
    if "Lambda" in str(first) or "unsafe" in str(first).lower() and "deserializ" in str(first).lower():
        raise UnsafeModel(f"refused to load the model: it needs unsafe deserialization (Python code) {UNSAFE_HINT}") from None
    if fmt == "keras-h5" and loader is None and _tf_keras_available():
        try:
            return LoadedKeras(_load_tf_keras(path, objects), "tf_keras")
        except ModelRejected:
            pass
    kind = ".h5" if fmt == "keras-h5" else ".keras"
    raise ModelRejected(f"could not load the {kind} model ({type(first).__name__}: {one_line(first)}); check that the "
                        "file is a complete Keras model") from None


def _tf_keras_available() -> bool:
    return importlib.util.find_spec("tf_keras") is not None


def _load_tf_keras(path: Path, objects: dict[str, Any]) -> Any:
    try:
        import tf_keras
    except ImportError:
        raise ModelRejected("this .h5 needs tf_keras (Keras 2) to load, which kvd does not have; pip install "
                            "'kvserve[server]' or save the model with Keras 3 (.keras)") from None
    try:
        return tf_keras.models.load_model(path, compile=False, custom_objects=objects)
    except Exception as error:  # noqa: BLE001
        name = missing_class(error)
        if name:
            raise ModelRejected(missing_class_message(name)) from None
        raise ModelRejected(f"could not load the .h5 model with Keras 3 or tf_keras ({type(error).__name__}: "
                            f"{one_line(error)}); check that the file is a complete Keras model") from None


# --- subclassed models: a functional view from the shape they were built with ----------------------------
def has_fixed_inputs(model: Any) -> bool:
    """Whether the model was built on symbolic inputs (functional, Sequential with an Input), so it has ``inputs``."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def functional_view(model: Any) -> Any:
    """``model`` itself when it has fixed inputs; for a ``keras.Model`` subclass (no ``Input``, built only by being
    called), a functional model around it: symbolic inputs of the shape Keras recorded when it was built (the
    ``.keras`` file's build config, batch dim made dynamic) called through the very same layers and weights, so
    the converter, the parity check and the TF backend all see fixed, named inputs and outputs. A subclass saved
    before it was ever built has no recorded shape: ModelRejected says how to build it."""
    if has_fixed_inputs(model):
        return model
    import keras

    shapes = (model.get_build_config() or {}).get("input_shape") if getattr(model, "built", False) else None
    if shapes is None:
        raise ModelRejected(f"the model ({type(model).__name__}, a keras.Model subclass) was saved before it was built, so "
                            "its input shape is unknown; call it once on a batch (model(x)) or model.build((None, ...)) "
                            "before model.save(), or upload model.export(dir) as a SavedModel") from None
    argument = _call_argument(model)
    dtype = _first_input_dtype(model)

    def symbolic(shape: Any, name: str) -> Any:
        return keras.Input(shape=tuple(None if d is None else int(d) for d in list(shape)[1:]), dtype=dtype, name=name)

    if isinstance(shapes, dict):
        inputs: Any = {key: symbolic(shape, str(key)) for key, shape in shapes.items()}
    elif _is_shape(shapes):
        inputs = symbolic(shapes, argument)
    else:
        inputs = [symbolic(shape, f"{argument}_{i}") for i, shape in enumerate(shapes)]
    try:
        outputs = model(inputs)
    except Exception as error:  # noqa: BLE001 - the subclass cannot be called on its recorded input shape
        raise ModelRejected(f"the model ({type(model).__name__}, a keras.Model subclass) cannot be called on symbolic inputs of "
                            f"the shape it was built with ({one_line(error, 150)}); save a functional model or upload "
                            "model.export(dir) as a SavedModel") from None
    if isinstance(outputs, (list, tuple)):
        outputs = [keras.layers.Identity(name=f"output_{i}")(out) for i, out in enumerate(outputs)]
    elif not isinstance(outputs, dict):
        outputs = keras.layers.Identity(name="output")(outputs)
    return keras.Model(inputs, outputs, name=f"{model.name}_functional")


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _call_argument(model: Any) -> str:
    """The name of ``call``'s first argument (``inputs``, ``x`` ...): what users of the subclass call its input."""
    import inspect

    try:
        parameters = [p for p in inspect.signature(model.call).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        parameters = []
    return parameters[0].name if parameters else "inputs"


def _first_input_dtype(model: Any) -> str:
    """The dtype the subclass's inputs have (the build config does not record it): integer tokens when its first
    layer is an Embedding or IntegerLookup, strings for TextVectorization/StringLookup, else float32."""
    layers = list(getattr(model, "layers", []) or [])
    kind = type(layers[0]).__name__ if layers else ""
    if kind in ("Embedding", "IntegerLookup"):
        return "int32"
    if kind in ("TextVectorization", "StringLookup"):
        return "string"
    return "float32"


# --- signature: names, never positions --------------------------------------------------------------------
def flatten(structure: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Leaves of a nest of dicts/lists/tuples with their paths, dicts in sorted key order (as Keras and tf.nest)."""
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in flatten(structure[key], path + (key,))]
    if isinstance(structure, (list, tuple)):
        return [leaf for index, item in enumerate(structure) for leaf in flatten(item, path + (index,))]
    return [(path, structure)]


def rebuild(structure: Any, leaves: Iterator[Any]) -> Any:
    """``structure`` with its leaves replaced, in ``flatten`` order."""
    if isinstance(structure, dict):
        return {key: rebuild(structure[key], leaves) for key in sorted(structure)}
    if isinstance(structure, (list, tuple)):
        return type(structure)(rebuild(item, leaves) for item in structure)
    return next(leaves)


def input_structure(model: Any) -> Any:
    """The nest of input tensors the model was built with (a dict for dict inputs)."""
    for attribute in ("_inputs_struct", "_nested_inputs"):  # Keras 3, tf_keras
        found = getattr(model, attribute, None)
        if found is not None:
            return found
    return model.inputs if len(model.inputs) > 1 else model.inputs[0]


def output_structure(model: Any) -> Any:
    for attribute in ("_outputs_struct", "_nested_outputs"):
        found = getattr(model, attribute, None)
        if found is not None:
            return found
    return model.outputs if len(model.outputs) > 1 else model.outputs[0]


def _leaf_name(path: tuple[Any, ...], fallback: str) -> str:
    keys = [str(p) for p in path if isinstance(p, str)]
    return "/".join(keys) if keys else fallback


def _datatype(tensor: Any, role: str, name: str) -> str:
    dtype = getattr(tensor, "dtype", "float32")
    text = getattr(dtype, "name", None) or str(dtype)
    text = {"tf.string": "string"}.get(text, text).replace("tf.", "")
    if text not in V2_DATATYPES:
        raise ModelRejected(f"{role} '{name}' has dtype {text}, which the v2 protocol cannot carry; cast it to "
                            "float32, an integer type or string in the model")
    return V2_DATATYPES[text]


def _makes_strings(tensor: Any) -> bool:
    """Keras declares an inverted StringLookup's output as int64; it is strings."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    return type(layer).__name__ == "StringLookup" and bool(getattr(layer, "invert", False))


def _producer_name(tensor: Any) -> str | None:
    """The name of the layer that made ``tensor`` (a stable name, unlike a KerasTensor's ``keras_tensor_116``)."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    name = getattr(layer, "name", None)
    return str(name) if name else None


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in tuple(tensor.shape))


def unique_names(names: list[str], taken: Iterable[str] = ()) -> list[str]:
    """``names`` made distinct, in order, the way Keras names layers: the first use of a name keeps it, a later
    use (or a name already in ``taken``, e.g. an output named like an input) gets the first suffix ``_1``,
    ``_2`` ... that no other name uses. Why: Keras lets a model return one tensor twice, call a shared layer
    twice (two outputs named after it) or give an output its input's name, while the v2 protocol, the IR's ports
    and the TF backend address tensors by name. Stable: it depends only on the names and their order."""
    reserved, used, out = set(taken) | set(names), set(taken), []
    for name in names:
        if name in used:
            suffix = 1
            while f"{name}_{suffix}" in reserved or f"{name}_{suffix}" in used:
                suffix += 1
            name = f"{name}_{suffix}"
        used.add(name)
        out.append(name)
    return out



def signature_output_names(structured_outputs: Iterable[str], input_names: Iterable[str]) -> list[tuple[str, str]]:
    """(served name, signature key) per output of a SavedModel signature, in key order: the keys made distinct
    from each other and from the inputs' names by ``unique_names``. The converter and the TF backend both name a
    SavedModel's outputs with this, so the IR, the manifest and the TF runner agree."""
    keys = sorted(structured_outputs)
    return list(zip(unique_names(keys, taken=input_names), keys))


def renamed(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Served name -> the original name, for the names ``unique_names`` changed (the manifest's renamed_outputs)."""
    return {new: old for new, old in pairs if new != old}

@dataclass
class KerasSignature:
    """A Keras model's inputs and outputs by the names users see, and how to call it by those names."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_struct: Any
    output_struct: Any
    renamed_outputs: dict[str, str] = field(default_factory=dict)  # served name -> the Keras name it repeats

    def call_args(self, feeds: dict[str, Any]) -> Any:
        """The model's call argument (dict, list or tensor) built from named feeds."""
        return rebuild(self.input_struct, iter(feeds[spec.name] for spec in self.inputs))

    def named_outputs(self, result: Any) -> dict[str, Any]:
        """The model's answer as ``{output name: value}``: by key for a flat dict answer whose keys are the names,
        else in flatten order (nested dicts, lists, renamed duplicates)."""
        names = [spec.name for spec in self.outputs]
        if isinstance(result, dict) and set(result) == set(names) and not self.renamed_outputs:
            return {name: result[name] for name in names}
        leaves = [leaf for _, leaf in flatten(result)]
        if len(leaves) != len(self.outputs):
            raise ValueError(f"the model answered {len(leaves)} tensors for {len(self.outputs)} outputs")
        return dict(zip(names, leaves))


def keras_signature(model: Any) -> KerasSignature:
    """Names: dict keys where the model takes or gives a dict, else the Keras input names and ``output_names``;
    repeated output names (and outputs named like an input) made distinct by ``unique_names``."""
    try:
        in_struct = input_structure(model)
        out_struct = output_structure(model)
    except (AttributeError, ValueError):  # a subclassed keras.Model that was never called on symbolic inputs
        raise ModelRejected(f"the model ({type(model).__name__}, a keras.Model subclass) has no fixed inputs and outputs "
                            "kvd can read; build it (call it once on a batch) before saving, or upload "
                            "model.export(dir) as a SavedModel") from None
    in_leaves = flatten(in_struct)
    in_names = unique_names([_leaf_name(path, tensor.name) for path, tensor in in_leaves])
    inputs = [TensorSpec(name, _datatype(tensor, "input", name), _shape(tensor)) for name, (_, tensor) in zip(in_names, in_leaves)]
    out_leaves = flatten(out_struct)
    keras_names = list(getattr(model, "output_names", None) or [])
    if len(keras_names) != len(out_leaves):  # Sequential has no output_names: name outputs by the layer making them
        keras_names = [_producer_name(t) or getattr(t, "name", f"output_{i}").split("/")[0].split(":")[0]
                       for i, (_, t) in enumerate(out_leaves)]
    given = [_leaf_name(path, fallback) for (path, _), fallback in zip(out_leaves, keras_names)]
    served = unique_names(given, taken=in_names)
    outputs = []
    for name, (_, tensor) in zip(served, out_leaves):
        datatype = "BYTES" if _makes_strings(tensor) else _datatype(tensor, "output", name)
        outputs.append(TensorSpec(name, datatype, _shape(tensor)))
    return KerasSignature(inputs, outputs, in_struct, out_struct, renamed(zip(served, given)))


def keras_predictor(model: Any, signature: KerasSignature) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Call the model eagerly by input names; answers by output names, strings as object arrays of bytes."""
    import tensorflow as tf

    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = signature.call_args({name: tf.constant(value) for name, value in feeds.items()})
        return {name: to_numpy(value) for name, value in signature.named_outputs(model(args, training=False)).items()}

    return predict


def to_numpy(value: Any) -> np.ndarray:
    """A framework tensor as numpy; string tensors become object arrays of bytes (v2 BYTES)."""
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return np.asarray(array)
