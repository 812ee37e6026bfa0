"""Turn what a user names on the command line into model inputs: ``.npy`` tensors as they are, images
decoded and preprocessed per the model's manifest; folders and glob patterns expand to their files.

Pillow and numpy only: the client never imports TensorFlow or OpenVINO.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from kvserve.proto.images import ImageError, Preprocess, image_shape, to_input
from kvserve.proto.tensors import DATATYPES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}


class InputError(ValueError):
    """A file could not be turned into the model's input; the message names the file and the fix."""


@dataclass
class NamedBatch:
    """One file's tensor with a batch dim, and a label per batch row for result tables."""

    source: str
    array: np.ndarray
    labels: list[str]


def expand(arguments: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named directly, inside folders (sorted, inputs only) or matched by glob patterns.

    Returns (files, problems): an argument that matches nothing is a problem (argument, message).
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            files += found
            if not found:
                problems.append((argument, f"{argument}: folder holds no images or .npy files"))
        elif any(ch in argument for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(argument) if Path(p).is_file())
            files += found
            if not found:
                problems.append((argument, f"{argument}: pattern matches no files"))
        else:
            files.append(path)
    return files, problems


def load_input(path: Path, spec: dict[str, Any], preprocess: Preprocess | None = None) -> NamedBatch:
    """One file as a batch for the model input ``spec`` (name, datatype, shape with -1 for the batch)."""
    shape = list(spec["shape"])
    dtype = DATATYPES[spec["datatype"]]
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise InputError(f"{path}: not a readable .npy file ({error})") from None
        if array.ndim == len(shape) - 1:
            array = array[None, ...]
        if array.ndim != len(shape):
            raise InputError(f"{path}: array of shape {list(array.shape)} does not fit input '{spec['name']}' of shape {shape}")
        array = array.astype(dtype, copy=False)
    elif suffix in IMAGE_SUFFIXES:
        if image_shape(shape) is None:
            raise InputError(f"{path}: model input '{spec['name']}' {shape} is not an NHWC image with 1 or 3 channels; send a .npy")
        try:
            array = to_input(path, shape, preprocess or Preprocess())[None, ...].astype(dtype, copy=False)
        except ImageError as error:
            raise InputError(f"{path}: {error}") from None
    else:
        raise InputError(f"{path}: unknown input type; give a .npy tensor or an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    labels = [str(path)] if array.shape[0] == 1 else [f"{path}[{i}]" for i in range(array.shape[0])]
    return NamedBatch(str(path), array, labels)
