"""The custom Keras class of the model zoo that a trusted server-side module registers with kvd.

kvd loads this module with ``--custom-objects zoo_objects`` (``tests/`` on its PYTHONPATH), so models made of
``ZooScale`` load. (The zoo's unregistered class lives in tests/zoo.py, which kvd never imports.)
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="zoo")
class ZooScale(keras.layers.Layer):
    """A learnt per-feature scale and shift followed by tanh: simple, but not a built-in layer."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, inputs):
        return keras.ops.tanh(inputs * self.scale + self.shift)


@keras.saving.register_keras_serializable(package="zoo")
class ZooSubclassed(keras.Model):
    """A keras.Model subclass with no Input: its input shape is known only from being called before saving."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(4, activation="softmax")

    def call(self, image, training=False):
        return self.head(self.pool(self.norm(self.conv(image), training=training)))


def kvserve_register_keras_objects(register) -> None:
    """The custom-objects hook: what a server-side module exposes so kvd can load models that use it."""
    register(ZooScale)
    register(ZooSubclassed)


CUSTOM_OBJECTS = {"zoo>ZooScale": ZooScale, "zoo>ZooSubclassed": ZooSubclassed}
