"""A zoo of standard Keras models, served through a real kvd and checked against Keras in this process.

Each entry builds a model with ``weights=None`` at a small input size, gives it weights whose outputs vary
(BatchNorm moving statistics taken from a realistic batch, classifier logits spread out), saves it in one
format (.keras, Keras 3 .h5, tf_keras .h5, or an exported SavedModel packed as .zip) and says how its real
inputs look (caffe-style pixels, 0-255 pixels, tokens inside the vocabulary, strings, dicts...). ``run_entry``
uploads it through ``kvserve.client.Client`` and reports the backend and precision rung kvd chose, the max
relative difference from Keras on fresh inputs and the tolerance the manifest records, or the refusal line.

Produce the compatibility table (docs/compatibility.md) with:

    .venv/bin/python tests/zoo.py --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED = 1234
ROWS = 4  # rows per served comparison
# Rows whose batch statistics become the BatchNorm moving statistics. Enough rows that they stand for the
# population: with 8, a deep net at 32x32 (1x1 feature maps at the end) got per-channel variances from 8 values,
# some near zero, and EfficientNetV2B0 became chaotic (a 1e-6 input change moved its softmax by 0.58, TF's graph
# and eager calls disagreed by 0.11, and no float32 backend could agree with Keras); with 64 it is 7e-6.
CALIBRATION_ROWS = 64



@dataclass(frozen=True)
class Entry:
    """One zoo model: how to build it, save it and draw inputs like the ones it will really see."""

    name: str
    category: str
    fmt: str  # "keras", "h5", "tf_keras_h5", "savedmodel" (model.export) or "tf_keras_savedmodel" (tf_keras model.save(dir))
    build: Callable[[], Any]
    draw: Callable[[np.random.Generator, int], Any]
    refuse: str = ""  # non-empty: the upload must be refused with one line naming this
    needs: str = ""  # what kvd must be started with for this entry (e.g. "custom-objects")
    heavy: bool = False


@dataclass
class Result:
    """What happened to one entry; ``outcome`` is served, refused, wrong or error."""

    name: str
    fmt: str
    outcome: str
    backend: str = ""
    rung: str = ""
    max_rel_diff: float | None = None
    tolerance: float | None = None
    message: str = ""
    code: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> list[str]:
        if self.outcome == "served":
            detail = f"{self.max_rel_diff:.2g} (tolerance {self.tolerance:.2g})"
        else:
            detail = f"{self.outcome.upper()}: {' '.join(self.message.split())[:300]}"
        return [self.name, self.fmt, self.backend or "-", self.rung or "-", detail.replace("|", "\\|")]


# --- inputs drawn like the real ones ---------------------------------------------------------------
def _photos(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """Image-like 0-255 pixels: smooth blobs (coarse noise upsampled) plus fine noise, not flat uniform noise."""
    coarse = rng.uniform(0, 255, size=(rows, 4, 4, 3))
    smooth = np.repeat(np.repeat(coarse, -(-size // 4), axis=1), -(-size // 4), axis=2)[:, :size, :size]
    return np.clip(smooth + rng.normal(0, 20, size=smooth.shape), 0, 255).astype(np.float32)


def pixels(size: int, mode: str) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Photos preprocessed as the Keras application expects them (``mode`` as keras.applications.imagenet_utils)."""

    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        x = _photos(rng, rows, size)
        if mode == "raw":  # the model rescales inside (EfficientNet, MobileNetV3, ConvNeXt)
            return x
        if mode == "tf":
            return x / 127.5 - 1.0
        if mode == "caffe":
            return (x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)).astype(np.float32)
        if mode == "torch":
            return ((x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
        raise ValueError(mode)

    return draw


def sequences(steps: int, features: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        return rng.normal(0, 1, size=(rows, steps, features)).astype(np.float32)

    return draw


def tokens(length: int, vocabulary: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Integer token ids inside the Embedding's vocabulary (0 is padding, so from 1)."""

    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        return rng.integers(1, vocabulary, size=(rows, length)).astype(np.int32)

    return draw


WORDS = "the a model served fast slow keras openvino cat dog runs sleeps on mat red blue".split()


def sentences(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Short sentences, some with words outside the vocabulary, as a (rows, 1) object array of bytes."""
    extra = ["zebra", "quantum"]
    out = np.empty((rows, 1), dtype=object)
    for i in range(rows):
        words = rng.choice(WORDS + extra, size=int(rng.integers(2, 9)))
        out[i, 0] = " ".join(words).encode()
    return out


def padded_sequences(steps: int, features: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Sequences of different lengths padded with zero steps at the end (what a Masking layer skips)."""

    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        x = rng.normal(0, 1, size=(rows, steps, features)).astype(np.float32)
        for row, length in enumerate(rng.integers(2, steps + 1, size=rows)):
            x[row, length:] = 0.0
        return x

    return draw


def padded_tokens(length: int, vocabulary: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Token ids with trailing 0 padding (an Embedding with mask_zero=True masks it)."""

    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        ids = rng.integers(1, vocabulary, size=(rows, length)).astype(np.int32)
        for row, used in enumerate(rng.integers(2, length + 1, size=rows)):
            ids[row, used:] = 0
        return ids

    return draw


def mixed_dtypes(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """Three inputs of three dtypes: counts (int64), flags (bool) and measurements (float32)."""
    return {"counts": rng.integers(0, 20, size=(rows, 3)).astype(np.int64), "flags": rng.random((rows, 2)) > 0.5,
            "values": rng.normal(0, 1, size=(rows, 4)).astype(np.float32)}


def vectors(width: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        return rng.normal(0, 1, size=(rows, width)).astype(np.float32)

    return draw


def features(**widths: int) -> Callable[[np.random.Generator, int], dict[str, np.ndarray]]:
    def draw(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
        return {name: rng.normal(0, 1, size=(rows, width)).astype(np.float32) for name, width in widths.items()}

    return draw


# --- making outputs vary -------------------------------------------------------------------------
def realistic(model: Any, draw: Callable[[np.random.Generator, int], Any], seed: int = SEED) -> Any:
    """Give a weights=None model weights whose outputs differ between inputs.

    BatchNorm gammas/betas get a spread, then its moving statistics become those of a realistic batch (one
    training-mode pass with momentum 0), so every normalised activation is in range at inference. The last
    Dense layer's kernel is rescaled so its logits spread (std ~2 across the batch) around zero.
    """
    import keras

    rng = np.random.default_rng(seed)
    norms = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        if layer.gamma is not None:
            layer.gamma.assign(rng.uniform(0.6, 1.4, size=layer.gamma.shape).astype("float32"))
        if layer.beta is not None:
            layer.beta.assign(rng.normal(0, 0.1, size=layer.beta.shape).astype("float32"))
    batch = draw(np.random.default_rng(seed + 1), CALIBRATION_ROWS)
    if not model.built:  # a keras.Model subclass is built (and its layers made) by its first call
        model(batch, training=False)
        norms = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if norms:
        momenta = [layer.momentum for layer in norms]
        for layer in norms:
            layer.momentum = 0.0
        model(batch, training=True)
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    dense = [layer for layer in _layers(model) if isinstance(layer, keras.layers.Dense)]
    if dense and _functional(model):  # the head's input is reachable only in a graph of layers
        head = dense[-1]
        probe = keras.Model(model.inputs, head.input)
        feats = np.asarray(probe(batch), dtype=np.float64).reshape(CALIBRATION_ROWS, -1)
        kernel = rng.normal(0, 1, size=head.kernel.shape)
        centred = (feats - feats.mean(0)) @ kernel
        kernel *= 2.0 / max(float(centred.std()), 1e-6)
        head.kernel.assign(kernel.astype(head.kernel.dtype))
        if head.bias is not None:
            head.bias.assign((-(feats.mean(0) @ kernel) + rng.normal(0, 0.5, size=head.bias.shape)).astype(head.bias.dtype))
    return model


def _functional(model: Any) -> bool:
    try:
        return bool(model.inputs)
    except AttributeError:
        return False


def _layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


# --- the zoo ---------------------------------------------------------------------------------------
def _app(factory: str, size: int, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import keras

        return getattr(keras.applications, factory)(weights=None, input_shape=(size, size, 3), classes=10, **kwargs)

    return build


def _small_cnn() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(5, activation="softmax", name="probabilities")(x))


def _tf_keras_cnn() -> Any:
    import tf_keras
    from tf_keras import layers

    model = tf_keras.Sequential([tf_keras.Input((16, 16, 3)), layers.Conv2D(8, 3, activation="relu"), layers.BatchNormalization(),
                                 layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax")])
    rng = np.random.default_rng(SEED)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.3, size=weight.shape).astype("float32") + (1.0 if "variance" in weight.name else 0.0))
    return model


def _recurrent(kind: str) -> Callable[[], Any]:
    def build() -> Any:
        import keras
        from keras import layers

        inputs = keras.Input((12, 6), name="series")
        if kind == "lstm":
            x = layers.LSTM(16)(inputs)
        elif kind == "gru":
            x = layers.GRU(16)(inputs)
        else:
            x = layers.Bidirectional(layers.LSTM(8, return_sequences=True))(inputs)
            x = layers.GlobalAveragePooling1D()(x)
        return keras.Model(inputs, layers.Dense(4, name="forecast")(x))

    return build


def _transformer() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((16,), dtype="int32", name="tokens")
    x = layers.Embedding(200, 32)(inputs)
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=16)(x, x)
    x = layers.LayerNormalization()(x + attended)
    x = layers.LayerNormalization()(x + layers.Dense(32)(layers.Dense(64, activation="relu")(x)))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="sentiment")(x))


def _embedding_text() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((20,), dtype="int32", name="tokens")
    x = layers.Embedding(500, 16)(inputs)
    x = layers.Conv1D(16, 3, activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax", name="label")(x))


def _strings() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((1,), dtype="string", name="text")
    x = layers.TextVectorization(max_tokens=40, output_sequence_length=8, vocabulary=WORDS)(inputs)
    x = layers.Embedding(40, 8)(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="topic")(x))


def _dict_inputs() -> Any:
    import keras
    from keras import layers

    inputs = {"age": keras.Input((3,), name="age"), "income": keras.Input((5,), name="income")}
    x = layers.Concatenate()([layers.Dense(8, activation="relu")(inputs["age"]), layers.Dense(8, activation="relu")(inputs["income"])])
    return keras.Model(inputs, layers.Dense(2, activation="softmax", name="risk")(x))


def _multi_io() -> Any:
    import keras
    from keras import layers

    left, right = keras.Input((6,), name="left"), keras.Input((4,), name="right")
    x = layers.Concatenate()([left, right])
    x = layers.Dense(16, activation="relu")(x)
    return keras.Model([left, right], {"score": layers.Dense(1, name="score")(x),
                                       "kind": layers.Dense(3, activation="softmax", name="kind")(x)})


def _preprocessing_inside() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((24, 24, 3), name="image")
    x = layers.Resizing(16, 16)(inputs)
    x = layers.Rescaling(1 / 255.0)(x)
    x = layers.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.08, 0.07, 0.06])(x)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="probabilities")(x))


def _augmentation_inside() -> Any:
    """A Keras tutorial's classifier with its data augmentation inside the model (identity in predict(), and
    RandomCrop a center crop): kvd must convert it as predict() runs it, not fall back to TF."""
    import keras
    from keras import layers

    inputs = keras.Input((24, 24, 3), name="image")
    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1), layers.RandomZoom(0.1),
                                layers.RandomContrast(0.2), layers.RandomTranslation(0.1, 0.1)], name="data_augmentation")
    x = layers.Rescaling(1 / 255.0)(augment(inputs))
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.RandomCrop(16, 16)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="probabilities")(x))


def _argmax_output() -> Any:
    """Scores and their argmax (keras.ops.argmax, which Keras' TF backend writes with a Bitcast OpenVINO cannot
    convert unless kvd traces it another way)."""
    import keras

    inputs = keras.Input((8,), name="features")
    scores = keras.layers.Dense(5, name="scores")(keras.layers.Dense(16, activation="relu")(inputs))
    return keras.Model(inputs, {"scores": scores, "label": keras.ops.argmax(scores, axis=-1)})


def _mixed_precision() -> Any:
    import keras
    from keras import layers

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((16, 16, 3), name="image")
        x = layers.Conv2D(8, 3, activation="relu")(inputs)
        x = layers.BatchNormalization()(x)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(5)(x)
        outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
        return keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _mixed_bfloat16() -> Any:
    import keras
    from keras import layers

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((12, 6), name="series")
        x = layers.Conv1D(16, 3, activation="relu")(inputs)
        x = layers.GlobalAveragePooling1D()(x)
        x = layers.Dense(8, activation="relu")(x)
        return keras.Model(inputs, layers.Dense(3, dtype="float32", name="scores")(x))
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _masked_lstm() -> Any:
    """Variable-length sequences (time dim None) with zero padding masked away."""
    import keras
    from keras import layers

    inputs = keras.Input((None, 5), name="steps")
    x = layers.Masking(mask_value=0.0)(inputs)
    x = layers.LSTM(12)(x)
    return keras.Model(inputs, layers.Dense(3, name="forecast")(x))


def _time_distributed() -> Any:
    """A per-step head over a GRU's sequence output: the output is a sequence too."""
    import keras
    from keras import layers

    inputs = keras.Input((10, 4), name="series")
    x = layers.Conv1D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.GRU(8, return_sequences=True)(x)
    return keras.Model(inputs, layers.TimeDistributed(layers.Dense(2), name="per_step")(x))


def _masked_embedding() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((12,), dtype="int32", name="tokens")
    x = layers.Embedding(300, 16, mask_zero=True)(inputs)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="label")(x))


def _mixed_dtypes() -> Any:
    import keras
    from keras import layers, ops

    counts = keras.Input((3,), dtype="int64", name="counts")
    flags = keras.Input((2,), dtype="bool", name="flags")
    values = keras.Input((4,), name="values")
    x = layers.Concatenate()([ops.log1p(ops.cast(counts, "float32")), ops.cast(flags, "float32"), values])
    x = layers.Dense(8, activation="relu")(x)
    return keras.Model({"counts": counts, "flags": flags, "values": values}, layers.Dense(2, name="score")(x))


def _fully_convolutional() -> Any:
    """No fixed image size (height and width None): any size is served."""
    import keras
    from keras import layers

    inputs = keras.Input((None, None, 3), name="image")
    x = layers.Conv2D(8, 3, activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def _two_heads_one_unused_input() -> Any:
    """Logits and a sigmoid head side by side, plus an input the outputs do not use."""
    import keras
    from keras import layers

    used, unused = keras.Input((6,), name="used"), keras.Input((2,), name="unused")
    x = layers.Dense(8, activation="relu")(used)
    return keras.Model([used, unused], [layers.Dense(3, name="logits")(x), layers.Dense(1, activation="sigmoid", name="prob")(x)])


def _sequential_mlp() -> Any:
    import keras
    from keras import layers

    return keras.Sequential([keras.Input((10,)), layers.Dense(16, activation="relu"), layers.Dropout(0.3),
                             layers.Dense(3, activation="softmax")], name="mlp")


def _subclassed() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo_objects import ZooSubclassed

    return ZooSubclassed()


def _tf_keras_lstm() -> Any:
    import tf_keras
    from tf_keras import layers

    model = tf_keras.Sequential([tf_keras.Input((12, 6)), layers.LSTM(8), layers.Dense(3)])
    rng = np.random.default_rng(SEED)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.4, size=weight.shape).astype("float32"))
    return model


def _same_tensor_twice() -> Any:
    """One tensor returned twice beside another output: Keras names both 'probabilities' (served as
    'probabilities' and 'probabilities_1')."""
    import keras
    from keras import layers

    inputs = keras.Input((8,), name="features")
    x = layers.Dense(16, activation="relu")(inputs)
    probabilities = layers.Dense(3, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, [probabilities, layers.Dense(1, name="score")(x), probabilities])


def _shared_layer_twice() -> Any:
    """A Siamese pair: one layer called on two inputs makes two different outputs Keras names alike ('embed')."""
    import keras
    from keras import layers

    left, right = keras.Input((6,), name="left"), keras.Input((6,), name="right")
    embed = layers.Dense(4, activation="tanh", name="embed")
    return keras.Model([left, right], [embed(left), embed(layers.Dense(6, name="shift")(right))])


def _nested_outputs() -> Any:
    """A dict of a list and a tensor as the model's answer."""
    import keras
    from keras import layers

    inputs = keras.Input((8,), name="features")
    x = layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, {"heads": [layers.Dense(2, name="first")(x), layers.Dense(3, activation="softmax", name="second")(x)],
                                "aux": layers.Dense(1, name="aux_score")(x)})


def _conv3d() -> Any:
    """A short video clip (frames x height x width x channels) through Conv3D."""
    import keras
    from keras import layers

    inputs = keras.Input((4, 12, 12, 3), name="clip")
    x = layers.Conv3D(8, 3, activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling3D((1, 2, 2))(x)
    x = layers.GlobalAveragePooling3D()(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="action")(x))


def clips(frames: int, size: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        return np.stack([_photos(rng, frames, size) / 127.5 - 1.0 for _ in range(rows)]).astype(np.float32)

    return draw


def _masked_attention() -> Any:
    """Padded tokens: Embedding(mask_zero) makes the padding mask MultiHeadAttention and pooling respect."""
    import keras
    from keras import layers

    inputs = keras.Input((12,), dtype="int32", name="tokens")
    x = layers.Embedding(300, 16, mask_zero=True)(inputs)
    x = layers.LayerNormalization()(x + layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="label")(x))


def _stacked_recurrent() -> Any:
    """Stacked LSTM (return_sequences) into a GRU, and the GRU's final state as a second output."""
    import keras
    from keras import layers

    inputs = keras.Input((10, 5), name="series")
    x = layers.LSTM(12, return_sequences=True)(inputs)
    x, state = layers.GRU(8, return_state=True, name="gru")(x)
    return keras.Model(inputs, {"forecast": layers.Dense(2)(x), "state": state})


def _fixed_batch() -> Any:
    """A model built for exactly 4 rows (batch dim fixed): served with that batch size only."""
    import keras
    from keras import layers

    inputs = keras.Input((8,), batch_size=ROWS, name="features")
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="probabilities")(layers.Dense(16, activation="relu")(inputs)))


def _uint8_image() -> Any:
    """Raw uint8 pixels in, cast and rescaled inside the model (what a model fed decoded JPEGs often takes)."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), dtype="uint8", name="pixels")
    x = layers.Rescaling(1 / 255.0)(layers.Identity()(keras.ops.cast(inputs, "float32")))
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="probabilities")(x))


def uint8_pixels(size: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        return _photos(rng, rows, size).round().astype(np.uint8)

    return draw


def _custom(registered: bool) -> Callable[[], Any]:
    def build() -> Any:
        import keras
        from keras import layers

        inputs = keras.Input((8,), name="features")
        x = layers.Dense(8)(inputs)
        x = _zoo_scale()(x) if registered else ZooUnregistered()(x)
        return keras.Model(inputs, layers.Dense(3, activation="softmax", name="probabilities")(x))

    return build


def _zoo_scale() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo_objects import ZooScale

    return ZooScale()


def _lambda() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((8,), name="features")
    x = layers.Lambda(lambda t: t * 2.0 + 1.0, name="double_plus_one")(inputs)
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="probabilities")(x))


def _unregistered_class() -> type:
    import keras

    @keras.saving.register_keras_serializable(package="zoo_private")
    class ZooUnregistered(keras.layers.Layer):
        """A custom layer that lives only in the uploader's process: kvd has no way to know it."""

        def call(self, inputs):
            return inputs * 2.0 - 1.0

    return ZooUnregistered


class _Lazy:
    """ZooUnregistered is defined on first use so importing this module does not import Keras."""

    _cls: type | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _Lazy._cls is None:
            _Lazy._cls = _unregistered_class()
        return _Lazy._cls(*args, **kwargs)


ZooUnregistered = _Lazy()

# Light entries first, so a run that is cut short still covers every category.
ZOO: tuple[Entry, ...] = (
    # recurrent and attention
    Entry("LSTM", "rnn", "keras", _recurrent("lstm"), sequences(12, 6)),
    Entry("GRU", "rnn", "h5", _recurrent("gru"), sequences(12, 6)),
    Entry("Bidirectional-LSTM", "rnn", "savedmodel", _recurrent("bidirectional"), sequences(12, 6)),
    Entry("Transformer", "attention", "keras", _transformer, tokens(16, 200)),
    # text, strings, dicts, several inputs and outputs
    Entry("Embedding-Conv1D", "text", "keras", _embedding_text, tokens(20, 500)),
    Entry("TextVectorization", "strings", "keras", _strings, sentences),
    Entry("dict-inputs", "dict", "keras", _dict_inputs, features(age=3, income=5)),
    Entry("multi-io-named", "multi-io", "keras", _multi_io, features(left=6, right=4)),
    Entry("multi-io-named", "multi-io", "savedmodel", _multi_io, features(left=6, right=4)),
    Entry("preprocessing-inside", "preprocessing", "keras", _preprocessing_inside, lambda rng, n: _photos(rng, n, 24)),
    Entry("augmentation-inside", "preprocessing", "keras", _augmentation_inside, lambda rng, n: _photos(rng, n, 24)),
    Entry("mixed_float16", "mixed-precision", "keras", _mixed_precision, pixels(16, "tf")),
    Entry("mixed_bfloat16", "mixed-precision", "keras", _mixed_bfloat16, sequences(12, 6)),
    # variable lengths, masks, sequence outputs, dtypes, free image sizes, several heads, subclasses
    Entry("Masking-LSTM-variable-length", "rnn", "keras", _masked_lstm, padded_sequences(9, 5)),
    Entry("Conv1D-GRU-TimeDistributed", "rnn", "h5", _time_distributed, sequences(10, 4)),
    Entry("Embedding-mask_zero-GAP1D", "text", "keras", _masked_embedding, padded_tokens(12, 300)),
    Entry("int64-bool-float32-inputs", "dtypes", "keras", _mixed_dtypes, mixed_dtypes),
    Entry("int64-bool-float32-inputs", "dtypes", "savedmodel", _mixed_dtypes, mixed_dtypes),
    Entry("fully-convolutional-None-HxW", "formats", "keras", _fully_convolutional, pixels(20, "tf")),
    Entry("logits-and-sigmoid-unused-input", "multi-io", "keras", _two_heads_one_unused_input, features(used=6, unused=2)),
    Entry("Sequential-MLP", "formats", "h5", _sequential_mlp, vectors(10)),
    Entry("subclassed-model", "custom", "keras", _subclassed, pixels(12, "tf"), needs="custom-objects"),
    Entry("LSTM-tf_keras", "formats", "tf_keras_h5", _tf_keras_lstm, sequences(12, 6)),
    # outputs named alike (served as name, name_1 ...), nested outputs, a fixed batch, Conv3D, masked attention
    Entry("same-tensor-twice", "multi-io", "keras", _same_tensor_twice, vectors(8)),
    Entry("argmax-output", "multi-io", "keras", _argmax_output, vectors(8)),
    Entry("same-tensor-twice", "multi-io", "savedmodel", _same_tensor_twice, vectors(8)),
    Entry("shared-layer-twice", "multi-io", "h5", _shared_layer_twice, features(left=6, right=6)),
    Entry("nested-outputs", "multi-io", "keras", _nested_outputs, vectors(8)),
    Entry("LSTM-GRU-return_state", "rnn", "keras", _stacked_recurrent, sequences(10, 5)),
    Entry("fixed-batch-4", "formats", "keras", _fixed_batch, vectors(8)),
    Entry("Conv3D", "video", "keras", _conv3d, clips(4, 12)),
    Entry("uint8-image-Rescaling", "dtypes", "keras", _uint8_image, uint8_pixels(16)),
    Entry("MultiHeadAttention-padding-mask", "attention", "keras", _masked_attention, padded_tokens(12, 300)),
    # formats of one small CNN
    Entry("small-cnn", "formats", "keras", _small_cnn, pixels(16, "tf")),
    Entry("small-cnn", "formats", "h5", _small_cnn, pixels(16, "tf")),
    Entry("small-cnn", "formats", "savedmodel", _small_cnn, pixels(16, "tf")),
    Entry("small-cnn-tf_keras", "formats", "tf_keras_h5", _tf_keras_cnn, pixels(16, "tf")),
    Entry("small-cnn-tf_keras", "formats", "tf_keras_savedmodel", _tf_keras_cnn, pixels(16, "tf")),
    # custom code
    Entry("custom-layer-plugin", "custom", "keras", _custom(True), features(features=8), needs="custom-objects"),
    Entry("custom-layer-no-plugin", "custom", "keras", _custom(False), features(features=8), refuse="ZooUnregistered"),
    Entry("Lambda", "custom", "keras", _lambda, features(features=8), refuse="Lambda"),
    # keras.applications families, weights=None, small inputs, preprocessed as each family expects
    Entry("ResNet50", "applications", "keras", _app("ResNet50", 32), pixels(32, "caffe"), heavy=True),
    Entry("MobileNetV2", "applications", "keras", _app("MobileNetV2", 32), pixels(32, "tf")),
    Entry("MobileNetV2", "applications", "h5", _app("MobileNetV2", 32), pixels(32, "tf")),
    Entry("MobileNetV3Small", "applications", "keras", _app("MobileNetV3Small", 32), pixels(32, "raw")),
    Entry("MobileNet", "applications", "keras", _app("MobileNet", 32), pixels(32, "tf")),
    Entry("EfficientNetB0", "applications", "keras", _app("EfficientNetB0", 32), pixels(32, "raw"), heavy=True),
    Entry("EfficientNetV2B0", "applications", "keras", _app("EfficientNetV2B0", 32), pixels(32, "raw"), heavy=True),
    Entry("DenseNet121", "applications", "keras", _app("DenseNet121", 32), pixels(32, "torch"), heavy=True),
    Entry("NASNetMobile", "applications", "keras", _app("NASNetMobile", 32), pixels(32, "tf"), heavy=True),
    Entry("ConvNeXtTiny", "applications", "keras", _app("ConvNeXtTiny", 32), pixels(32, "raw"), heavy=True),
    Entry("Xception", "applications", "keras", _app("Xception", 71), pixels(71, "tf"), heavy=True),
    Entry("InceptionV3", "applications", "savedmodel", _app("InceptionV3", 75), pixels(75, "tf"), heavy=True),
    Entry("VGG16", "applications", "keras", _app("VGG16", 32), pixels(32, "caffe"), heavy=True),
    Entry("MobileNetV3Large", "applications", "keras", _app("MobileNetV3Large", 32), pixels(32, "raw"), heavy=True),
    Entry("ResNet50V2", "applications", "h5", _app("ResNet50V2", 32), pixels(32, "tf"), heavy=True),
)


def entry_id(entry: Entry) -> str:
    return f"{entry.name}.{entry.fmt}"


# --- building, saving, serving ---------------------------------------------------------------------
@dataclass
class Built:
    entry: Entry
    path: Path
    inputs: Any
    reference: dict[str, np.ndarray]


def build(entry: Entry, out_dir: Path) -> Built:
    """Build, weight, save the model, and compute Keras's answer on fresh inputs in this process."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = entry.build()
    if not entry.fmt.startswith("tf_keras"):
        realistic(model, entry.draw)
    inputs = entry.draw(np.random.default_rng(SEED + 2), ROWS)
    raw = model(inputs, training=False) if not entry.fmt.startswith("tf_keras") else model(inputs)
    reference = served_names(model, raw, entry.fmt)
    stem = out_dir / entry_id(entry).replace("-", "_").replace(".", "_")
    if entry.fmt == "keras":
        path = stem.with_suffix(".keras")
        model.save(path)
    elif entry.fmt in ("h5", "tf_keras_h5"):
        path = stem.with_suffix(".h5")
        model.save(path)
    else:
        export = stem.with_name(stem.name + "_savedmodel")
        with _quiet():
            if entry.fmt == "tf_keras_savedmodel":  # Keras 2's own SavedModel (what tf_keras's model.save(dir) writes)
                model.save(str(export), save_format="tf")
            else:
                model.export(export, verbose=False)
        path = stem.with_suffix(".zip")
        with zipfile.ZipFile(path, "w") as archive:
            for file in sorted(export.rglob("*")):
                archive.write(file, file.relative_to(export.parent))
    return Built(entry, path, inputs, reference)


def served_names(model: Any, raw: Any, fmt: str) -> dict[str, np.ndarray]:
    """Keras's answer under the names kvd promises (docs/compatibility.md): dict keys (nested keys joined by '/'),
    else the Keras output names; a name used before, or an input's name, gets the first free suffix _1, _2 ...
    in output order. An exported SavedModel names its outputs output_0, output_1 ... ('' for a single output:
    compared with kvd's only one)."""
    leaves: list[tuple[str, Any]] = []

    def walk(node: Any, keys: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for key in sorted(node):
                walk(node[key], keys + (str(key),))
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item, keys)
        else:
            leaves.append(("/".join(keys), np.asarray(node)))

    walk(raw, ())
    if len(leaves) == 1 and not leaves[0][0]:
        return {"": leaves[0][1]}
    if fmt == "savedmodel" and not isinstance(raw, Mapping):
        return {f"output_{i}": value for i, (_, value) in enumerate(leaves)}
    if not isinstance(raw, Mapping):
        leaves = [(name, value) for name, (_, value) in zip(model.output_names, leaves)]
    taken = {getattr(t, "name", "") for t in model.inputs}
    reserved, result = taken | {name for name, _ in leaves}, {}
    for name, value in leaves:
        served = name
        if served in taken:
            suffix = 1
            while f"{name}_{suffix}" in taken | reserved:
                suffix += 1
            served = f"{name}_{suffix}"
        taken.add(served)
        result[served] = value
    return result


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _served_name(entry: Entry) -> str:
    return "zoo-" + entry_id(entry).replace("_", "-").replace(".", "-").lower()


def rung_of(manifest: Mapping[str, Any], backend: str) -> str:
    """The precision rung that serves: the ladder's last rung, else weights/execution from the parity report."""
    if backend == "TF":
        return "original (TF)"
    ladder = manifest.get("ladder") or []
    if ladder:
        last = ladder[-1]
        return f"{last.get('weights')}/{last.get('execution')}"
    parity = manifest.get("parity") or {}
    return f"{manifest.get('precision')}/{parity.get('execution_precision', '?')}"


def tolerance_of(manifest: Mapping[str, Any], backend: str) -> float:
    """The tolerance the manifest records (the parity check's own bound); TF runs the original model in fp32."""
    from kvserve.server.uploads.parity import tolerance_for

    parity = manifest.get("parity") or {}
    if "tolerance_max_rel_diff" in parity:
        return float(parity["tolerance_max_rel_diff"])
    if backend == "TF":
        return tolerance_for("fp32", "f32")
    from precision import promised

    return promised(manifest)


def run_entry(built: Built, client: Any, timeout: float = 600) -> Result:
    """Upload through the client, then compare kvd's answer with Keras's; never raises for a model problem."""
    import grpc

    from precision import rel_diff

    entry, started = built.entry, time.monotonic()
    name = _served_name(entry)
    result = Result(entry.name, entry.fmt, "error")
    try:
        client.upload(built.path, name=name, timeout=timeout)
    except grpc.RpcError as error:
        result.outcome, result.code, result.message = "refused", error.code().name, error.details() or ""
        result.seconds = time.monotonic() - started
        return result
    try:
        described = client.describe(name)
        manifest = described["manifest"]
        result.backend = (manifest.get("served_by") or {}).get("backend") or described.get("device", "")
        result.rung = rung_of(manifest, result.backend)
        result.tolerance = tolerance_of(manifest, result.backend)
        result.parity = manifest.get("parity") or {}
        feeds = built.inputs if isinstance(built.inputs, Mapping) else built.inputs
        served = client.infer(name, feeds)
        worst = 0.0
        for key, expected in built.reference.items():
            if key:
                if key not in served:
                    raise KeyError(f"output '{key}' missing; kvd answered {sorted(served)}")
                got = served[key]
            else:
                if len(served) != 1:
                    raise KeyError(f"expected one output, kvd answered {sorted(served)}")
                got = next(iter(served.values()))
            if got.shape != expected.shape:
                raise ValueError(f"output shape {got.shape} != Keras {expected.shape}")
            worst = max(worst, rel_diff(got, expected))
        result.max_rel_diff = worst
        result.outcome = "served" if worst <= result.tolerance else "wrong"
        if result.outcome == "wrong":
            result.message = f"max rel diff {worst:.3g} > tolerance {result.tolerance:.3g}"
    except grpc.RpcError as error:
        result.outcome, result.code, result.message = "error", error.code().name, f"infer: {error.details()}"
    except Exception as error:  # noqa: BLE001 - the table reports whatever went wrong, one line per model
        result.outcome, result.message = "error", f"{type(error).__name__}: {error}".splitlines()[0]
    result.seconds = time.monotonic() - started
    return result


@functools.lru_cache(maxsize=None)
def kvd_supports(option: str) -> bool:
    """Whether this kvd has a command-line option (the custom-objects hook lands on its own branch)."""
    import subprocess

    usage = subprocess.run([sys.executable, "-m", "kvserve.server.main", "--help"], capture_output=True, text=True, timeout=120)
    return option in usage.stdout


def kvd_arguments() -> tuple[list[str], dict[str, str]]:
    """kvd's arguments and environment for the zoo: tests/zoo_objects.py as the trusted custom-objects module."""
    if not kvd_supports("--custom-objects"):
        return [], {}
    tests_dir = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    return ["--custom-objects", "zoo_objects"], {"PYTHONPATH": path}


def build_and_run(entry: Entry, client: Any, out_dir: Path, building: threading.Lock) -> Result:
    """Build under ``building`` (Keras state is global), then serve and compare; a build failure is a result too."""
    started = time.monotonic()
    try:
        with building:
            built = build(entry, out_dir)
    except Exception as error:  # noqa: BLE001 - the table reports whatever went wrong, one line per model
        return Result(entry.name, entry.fmt, "error", message=f"build: {type(error).__name__}: {error}".splitlines()[0])
    result = run_entry(built, client)
    result.seconds = time.monotonic() - started
    return result


def submit_all(pool: ThreadPoolExecutor, entries: list[Entry], client: Any, out_dir: Path) -> dict[str, Future]:
    """Start every entry on ``pool``: with two workers one model is built while kvd converts another."""
    building = threading.Lock()
    return {entry_id(entry): pool.submit(build_and_run, entry, client, out_dir, building) for entry in entries}


def markdown(results: list[Result]) -> str:
    lines = ["| model | format | backend | precision rung | max rel diff (tolerance) or refusal |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r.row()) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the zoo, serve it from a fresh kvd, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/compatibility.md)")
    parser.add_argument("--only", default="", help="comma-separated entry ids (e.g. LSTM.keras,Lambda.keras)")
    parser.add_argument("--light", action="store_true", help="skip the heavy keras.applications entries")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import start_kvd

    entries = [e for e in ZOO if (not args.only or entry_id(e) in args.only.split(",")) and not (args.light and e.heavy)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kvserve-zoo-") as tmp:
        extra, env = kvd_arguments()
        kvd = start_kvd(Path(tmp) / "repo", *extra, env=env)
        try:
            with kvd.client(timeout=120) as client, ThreadPoolExecutor(max_workers=2) as pool:
                for key, future in submit_all(pool, entries, client, Path(tmp)).items():
                    results.append(r := future.result())
                    print(f"{key}: {r.outcome} {r.backend} {r.rung} {r.max_rel_diff} {r.message} ({r.seconds:.1f}s)", file=sys.stderr, flush=True)
        finally:
            kvd.stop()
    print(markdown(results) if args.markdown else "\n".join(str(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
