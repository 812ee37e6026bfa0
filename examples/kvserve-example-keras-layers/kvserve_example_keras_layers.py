"""Example kvserve plugin: a custom Keras layer kvd can load once this plugin is installed.

Keras saves a custom layer by its class name; loading needs the class. kvd asks plugins for such classes
through the hook ``kvserve_register_keras_objects(register)``, called only in the processes that load Keras
models (the converter child, the TF backend), so importing Keras here never slows kvd's start.
The same module also works as ``kvd --custom-objects kvserve_example_keras_layers`` (kvd calls the hook of a
--custom-objects module too).
"""

from __future__ import annotations

from typing import Any

from kvserve.plugins.hookspecs import hookimpl


def scaled_dense_class() -> Any:
    """ScaledDense: a Dense layer whose output is multiplied by a learned per-unit scale (built lazily, so
    importing this plugin does not import Keras)."""
    import keras

    @keras.saving.register_keras_serializable(package="kvserve_example")
    class ScaledDense(keras.layers.Layer):
        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")
            self.scale = self.add_weight(shape=(self.units,), initializer="ones", name="scale")

        def call(self, inputs: Any) -> Any:
            return keras.ops.matmul(inputs, self.kernel) * self.scale

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "units": self.units}

    return ScaledDense


_CLASSES: dict[str, Any] = {}


def classes() -> dict[str, Any]:
    """The plugin's classes, made once per process (Keras refuses two registrations of one name)."""
    if not _CLASSES:
        _CLASSES["ScaledDense"] = scaled_dense_class()
    return _CLASSES


@hookimpl
def kvserve_register_keras_objects(register: Any) -> None:
    for name, cls in classes().items():
        register(cls, name)
