"""Built-in ``TF`` backend: serves the original Keras model (or SavedModel) with TensorFlow.

For models OpenVINO cannot convert, and as the reference the benchmark compares against. TensorFlow is
imported only when a TF-served model is loaded, never merely because this plugin is registered.
"""

from __future__ import annotations

import importlib.util
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import Availability, LoadRequest, TensorSpec, UnsafeModel

SOURCE_FORMATS = ("keras-h5", "keras-v3", "savedmodel")


def _tf_version() -> str:
    for dist in ("tensorflow-cpu", "tensorflow", "tensorflow-intel"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


class TensorFlowRunner:
    """One traced ``tf.function`` taking and giving tensors by name (a dict in, a dict out), with a dynamic
    batch dim; TensorFlow handles concurrent calls itself. Self-contained: built from a model directory and its
    manifest alone (``load_tensorflow_runner``), so it can run in a worker process."""

    def __init__(self, function: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], keep_alive: Any) -> None:
        self.function = function
        self.inputs = inputs
        self.output_names = [spec.name for spec in outputs]
        self._keep_alive = keep_alive
        self._lock = threading.Lock()

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        import tensorflow as tf

        from kvserve.plugins.keras_loading import to_numpy

        result = self.function({spec.name: tf.constant(inputs[spec.name]) for spec in self.inputs})
        return {name: to_numpy(result[name]) for name in (outputs or self.output_names)}

    def close(self) -> None:
        self.function = None
        self._keep_alive = None


def load_tensorflow_runner(model_dir: Path, manifest: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec],
                           allow_unsafe: bool = False) -> TensorFlowRunner:
    """The original model (Keras 3, tf_keras or SavedModel) behind a name-keyed ``tf.function``."""
    import tensorflow as tf

    from kvserve.plugins.keras_loading import keras_signature, load_keras, signature_output_names

    source = manifest["source"]
    signature = {s.name: tf.TensorSpec([None if d < 0 else d for d in s.shape], _tf_dtype(s.datatype), name=_tf_name(s.name))
                 for s in inputs}
    if source["format"] == "savedmodel":
        loaded = tf.saved_model.load(str(model_dir / source["savedmodel_dir"]))
        serving = loaded.signatures["serving_default"]
        names = signature_output_names(serving.structured_outputs, [spec.name for spec in inputs])

        def call(feeds: dict[str, Any]) -> Any:
            result = serving(**feeds)
            return {name: result[key] for name, key in names}

        return TensorFlowRunner(tf.function(call, input_signature=[signature]), inputs, outputs, loaded)
    loader = (manifest.get("converter") or {}).get("loader")
    model = load_keras(model_dir / source["file"], source["format"], allow_unsafe, loader=loader).model
    names = keras_signature(model)
    known = {spec.name for spec in names.inputs}
    if known != set(signature):
        raise RuntimeError(f"the model's inputs {sorted(known)} differ from the manifest's {sorted(signature)}")

    def forward(feeds: dict[str, Any]) -> Any:
        return names.named_outputs(model(names.call_args(feeds), training=False))

    return TensorFlowRunner(tf.function(forward, input_signature=[signature], reduce_retracing=True), inputs, outputs, model)


def _tf_name(name: str) -> str:
    """A TensorSpec name TensorFlow accepts (dict keys may hold characters its op names may not)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", name) or "input"


SAVEDMODEL_OPT_IN = ("a SavedModel served by TensorFlow runs its graph as stored, and a graph may read and write files "
                     "(ReadFile/WriteFile ops): kvd serves one with TF only when started with --allow-unsafe-deserialization "
                     "(a SavedModel OpenVINO converts is served without it)")


def unsafe_reason(manifest: Mapping[str, Any], allow_unsafe: bool) -> str | None:
    """Why TF must not serve this model without the opt-in (None: it may)."""
    if allow_unsafe or (manifest.get("source") or {}).get("format") != "savedmodel":
        return None
    return SAVEDMODEL_OPT_IN


class TensorFlowBackend:
    """Serves the original model with TensorFlow, in a worker child (``isolated``): kvd never imports TF, and
    a crash, OOM or file op in the model costs that model only."""

    name = "TF"
    precisions = ("fp32",)
    isolated = True

    def properties(self) -> dict[str, str]:
        return {"intra_op_threads": "TF default", "inter_op_threads": "TF default"}

    def availability(self) -> Availability:
        if importlib.util.find_spec("tensorflow") is None:
            return Availability(False, "TensorFlow is not installed (pip install 'kvserve[server]')")
        return Availability(True, "", f"TensorFlow {_tf_version()} (CPU)")

    def can_serve(self, manifest: Mapping[str, Any]) -> str | None:
        if manifest.get("source", {}).get("format") not in SOURCE_FORMATS:
            return f"TF serves {', '.join(SOURCE_FORMATS)} uploads only"
        return None

    def admit(self, request: LoadRequest) -> None:
        """Checked by kvd before a worker is started: a SavedModel needs the unsafe-deserialization opt-in."""
        reason = unsafe_reason(request.manifest, request.allow_unsafe_deserialization)
        if reason:
            raise UnsafeModel(reason)

    def load(self, request: LoadRequest) -> TensorFlowRunner:
        self.admit(request)
        return load_tensorflow_runner(request.model_dir, request.manifest, request.inputs, request.outputs,
                                      request.allow_unsafe_deserialization)


def _tf_dtype(datatype: str) -> Any:
    import tensorflow as tf

    return {"FP32": tf.float32, "FP16": tf.float16, "FP64": tf.float64, "INT8": tf.int8, "INT16": tf.int16, "INT32": tf.int32,
            "INT64": tf.int64, "UINT8": tf.uint8, "UINT16": tf.uint16, "UINT32": tf.uint32, "UINT64": tf.uint64,
            "BOOL": tf.bool, "BYTES": tf.string}[datatype]


@hookimpl
def kvserve_register_backends(register: Any) -> None:
    register(TensorFlowBackend())
