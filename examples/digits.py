"""A small CNN trained in seconds on scikit-learn's bundled digits (8x8 grayscale, 10 classes).

Used by ``make demo`` and by the test suite; nothing is downloaded. Pixels are scaled to [0, 1] (digits
range 0-16), so a PNG written with values 0-255 maps back with the ``unit`` (/255) preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_data(test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x is float32 NHWC in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return x_train, y_train, x_test, y_test


def build_model():  # -> keras.Model
    import keras

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train(epochs: int = 12, seed: int = 0):
    """Train the CNN; returns (model, x_test, y_test). Takes a few seconds on two cores."""
    import keras

    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = load_data(seed=seed)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model, x_test, y_test


def save_all_formats(model, out_dir: Path) -> dict[str, Path]:
    """The model as Keras 2 .h5, Keras 3 .keras, and an exported SavedModel packed as .zip."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"h5": out_dir / "digits.h5", "keras": out_dir / "digits.keras"}
    model.save(paths["h5"])
    model.save(paths["keras"])
    exported = out_dir / "digits_savedmodel"
    model.export(str(exported), verbose=False)
    paths["savedmodel_dir"] = exported
    paths["savedmodel_zip"] = Path(shutil.make_archive(str(out_dir / "digits_savedmodel"), "zip", root_dir=out_dir, base_dir=exported.name))
    return paths


def write_pngs(x: np.ndarray, y: np.ndarray, out_dir: Path, count: int = 10) -> list[tuple[Path, int]]:
    """Digit images as 8x8 grayscale PNGs (0-255), one per class where possible; returns (path, label)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(count, len(x))):
        path = out_dir / f"digit_{index:02d}_label{int(y[index])}.png"
        Image.fromarray(np.round(x[index, ..., 0] * 255).astype(np.uint8), mode="L").save(path)
        written.append((path, int(y[index])))
    return written
