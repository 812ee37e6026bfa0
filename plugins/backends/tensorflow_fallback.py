"""Built-in ``TF`` backend: serves the original Keras model (or SavedModel) with TensorFlow.

For models OpenVINO cannot convert, and as the reference the benchmark compares against. TensorFlow is
imported only when a TF-served model is loaded, never merely because this plugin is registered.
"""

from __future__ import annotations

import importlib.util
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping

import numpy as np

from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import Availability, LoadRequest, TensorSpec

SOURCE_FORMATS = ("keras-h5", "keras-v3", "savedmodel")


def _tf_version() -> str:
    for dist in ("tensorflow-cpu", "tensorflow", "tensorflow-intel"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


class TensorFlowRunner:
    """One traced ``tf.function`` with a dynamic batch dim; TensorFlow handles concurrent calls itself."""

    def __init__(self, function: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], keep_alive: Any) -> None:
        self.function = function
        self.inputs = inputs
        self.output_names = [spec.name for spec in outputs]
        self._keep_alive = keep_alive
        self._lock = threading.Lock()

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        import tensorflow as tf

        result = self.function(*[tf.constant(inputs[spec.name]) for spec in self.inputs])
        values = result if isinstance(result, (list, tuple)) else [result]
        by_name = dict(result) if isinstance(result, dict) else dict(zip(self.output_names, values))
        return {name: np.asarray(by_name[name]) for name in (outputs or self.output_names)}

    def close(self) -> None:
        self.function = None
        self._keep_alive = None


class TensorFlowBackend:
    name = "TF"
    precisions = ("fp32",)

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

    def load(self, request: LoadRequest) -> TensorFlowRunner:
        import tensorflow as tf

        source = request.manifest["source"]
        signature = [tf.TensorSpec([None if d < 0 else d for d in s.shape], _tf_dtype(s.datatype), name=s.name) for s in request.inputs]
        if source["format"] == "savedmodel":
            loaded = tf.saved_model.load(str(request.model_dir / source["savedmodel_dir"]))
            serving = loaded.signatures["serving_default"]
            names = [s.name for s in request.inputs]

            def call(*tensors: Any) -> Any:
                return serving(**dict(zip(names, tensors)))

            return TensorFlowRunner(tf.function(call, input_signature=signature), request.inputs, request.outputs, loaded)
        import keras

        model = keras.models.load_model(request.model_dir / source["file"], compile=False,
                                        safe_mode=not request.allow_unsafe_deserialization)

        def forward(*tensors: Any) -> Any:
            return model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)

        return TensorFlowRunner(tf.function(forward, input_signature=signature, reduce_retracing=True), request.inputs, request.outputs, model)


def _tf_dtype(datatype: str) -> Any:
    import tensorflow as tf

    return {"FP32": tf.float32, "FP16": tf.float16, "FP64": tf.float64, "INT8": tf.int8, "INT16": tf.int16, "INT32": tf.int32,
            "INT64": tf.int64, "UINT8": tf.uint8, "UINT16": tf.uint16, "BOOL": tf.bool}[datatype]


@hookimpl
def kvserve_register_backends(register: Any) -> None:
    register(TensorFlowBackend())
