"""Turn the files a user names into model inputs: ``.npy`` tensors as they are, images decoded and resized.

Pillow only: the client never imports TensorFlow or OpenVINO.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kvserve.proto.tensors import DATATYPES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class InputError(ValueError):
    """A file could not be turned into the model's input; the message names the file and the fix."""


@dataclass
class NamedBatch:
    """One file's tensor with a batch dim, and a label per batch row for result tables."""

    source: str
    array: np.ndarray
    labels: list[str]


def load_image(path: Path, height: int, width: int, channels: int) -> np.ndarray:
    """Decode (EXIF orientation honoured), convert to grayscale/RGB, resize bilinear; float32 HWC 0-255."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image = image.convert("L" if channels == 1 else "RGB")
            if height > 0 and width > 0 and image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable image ({error})") from None
    return array[..., None] if array.ndim == 2 else array


def load_input(path: Path, spec: dict[str, Any]) -> NamedBatch:
    """One file as a batch for the model input ``spec`` (name, datatype, shape with -1 for the batch)."""
    shape = list(spec["shape"])
    dtype = DATATYPES[spec["datatype"]]
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise InputError(f"{path}: not a readable .npy file ({error})") from None
        if array.ndim == len(shape) - 1:
            array = array[None, ...]
        if array.ndim != len(shape):
            raise InputError(f"{path}: array of shape {list(array.shape)} does not fit input '{spec['name']}' of shape {shape}")
        array = array.astype(dtype, copy=False)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        if len(shape) != 4 or shape[-1] not in (1, 3):
            raise InputError(f"{path}: model input '{spec['name']}' {shape} is not an NHWC image with 1 or 3 channels; send a .npy")
        array = load_image(path, shape[1], shape[2], shape[3])[None, ...].astype(dtype, copy=False)
    else:
        raise InputError(f"{path}: unknown input type; give a .npy tensor or an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    labels = [str(path)] if array.shape[0] == 1 else [f"{path}[{i}]" for i in range(array.shape[0])]
    return NamedBatch(str(path), array, labels)


def top_k(scores: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per batch row, the k best (index, score) pairs, best first."""
    flat = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = max(1, min(k, flat.shape[1]))
    rows = []
    for row in flat:
        best = np.argpartition(-row, k - 1)[:k]
        best = best[np.argsort(-row[best], kind="stable")]
        rows.append([(int(i), float(row[i])) for i in best])
    return rows
