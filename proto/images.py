"""Image preprocessing as part of the model: decode, colour, resize (optionally centre-crop), scale.

One implementation for both ends: kvctl preprocesses client-side with it, and kvd uses the same code for
BYTES (encoded image) inputs, so the two agree to float rounding. Pillow and numpy only.

Modes (pixel values ``x`` in 0-255, RGB or grayscale):
  none       x as float
  unit       x / 255
  inception  x / 127.5 - 1                     (Keras InceptionV3, Xception, MobileNet)
  caffe      RGB -> BGR, minus the ImageNet mean (Keras ResNet50, VGG)
  torch      (x / 255 - ImageNet mean) / std   (Keras DenseNet)
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

MODES = ("none", "unit", "inception", "caffe", "torch")
RESIZE_METHODS = ("bilinear", "nearest", "bicubic")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Keras application model names -> the preprocessing their weights expect.
KERAS_APPLICATIONS = {
    "inception_v3": "inception", "inception_resnet_v2": "inception", "xception": "inception",
    "mobilenet": "inception", "mobilenetv2": "inception", "mobilenet_1.00_224": "inception",
    "mobilenetv2_1.00_224": "inception", "nasnet": "inception",
    "resnet50": "caffe", "resnet101": "caffe", "resnet152": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "resnet50v2": "inception", "resnet101v2": "inception", "resnet152v2": "inception",
    "densenet121": "torch", "densenet169": "torch", "densenet201": "torch",
    # these rescale inside the model: they take 0-255 pixels as they are
    "mobilenetv3": "none", "efficientnet": "none", "convnext": "none", "regnet": "none", "resnet-rs": "none",
}


class ImageError(ValueError):
    """Bytes that are not a decodable image, or an image that cannot feed the model."""


@dataclass(frozen=True)
class Preprocess:
    mode: str = "none"
    resize: str = "bilinear"
    center_crop: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown preprocessing '{self.mode}'; use one of {', '.join(MODES)}")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"unknown resize method '{self.resize}'; use one of {', '.join(RESIZE_METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Preprocess":
        data = data or {}
        return cls(str(data.get("mode", "none")), str(data.get("resize", "bilinear")), bool(data.get("center_crop", False)))


def suggested_mode(model_name: str) -> str | None:
    """The Keras preprocessing for a recognisable Keras application architecture, else None."""
    name = model_name.lower()
    if name in KERAS_APPLICATIONS:
        return KERAS_APPLICATIONS[name]
    prefixes = [key for key in KERAS_APPLICATIONS if name.startswith(key)]  # the longest: resnet50v2, not resnet50
    return KERAS_APPLICATIONS[max(prefixes, key=len)] if prefixes else None


def scale(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Apply a mode's formula to float pixels (..., H, W, C) in 0-255; C is 1 (grayscale) or 3 (RGB)."""
    x = pixels.astype(np.float32, copy=False)
    channels = x.shape[-1]
    if mode == "none":
        return x.copy() if x is pixels else x
    if mode == "unit":
        return x / np.float32(255.0)
    if mode == "inception":
        return x / np.float32(127.5) - np.float32(1.0)
    if mode == "caffe":
        if channels == 3:
            return x[..., ::-1] - CAFFE_MEAN_BGR
        return x - CAFFE_MEAN_BGR.mean()
    if mode == "torch":
        mean, std = (TORCH_MEAN, TORCH_STD) if channels == 3 else (TORCH_MEAN.mean(), TORCH_STD.mean())
        return (x / np.float32(255.0) - mean) / std
    raise ValueError(f"unknown preprocessing '{mode}'")


MAX_IMAGE_PIXELS = 40_000_000  # one image as decoded (about a 6300x6300 photo); more is refused undecoded
MAX_REQUEST_PIXELS = 100_000_000  # every image of one request together (header or target size, whichever is larger)


def decoded_pixels(data: bytes | Path, height: int, width: int, channels: int) -> int:
    """How many pixels decoding ``data`` for an (height, width) target would allocate, from the header alone
    (Pillow opens lazily; JPEG draft scaling applied): what a pixel budget is charged before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_source(data)) as image:
            _draft(image, height, width, channels)
            return int(image.size[0]) * int(image.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"not a readable image ({error})") from None


def _draft(image: Any, height: int, width: int, channels: int) -> None:
    """JPEG only: decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller (no quality lost after resize)."""
    if image.format == "JPEG" and height > 0 and width > 0:
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation that swaps the sides
        image.draft("L" if channels == 1 else "RGB", (height, width) if turned else (width, height))


def _source(data: bytes | Path) -> Any:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data


def decode(data: bytes | Path, height: int, width: int, channels: int, resize: str = "bilinear", center_crop: bool = False,
           max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image -> float32 (H, W, C) pixels 0-255: EXIF orientation honoured, grayscale or RGB by ``channels``.

    Bounded before decoding: the header's size is checked against ``max_pixels`` (after JPEG draft mode, which
    decodes at 1/2, 1/4 or 1/8 scale when the target is that much smaller), so a small file claiming a huge
    image is refused without allocating it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    filters = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}
    try:
        with Image.open(_source(data)) as image:
            _draft(image, height, width, channels)
            source_w, source_h = image.size
            if source_w * source_h > max_pixels:
                raise ImageError(f"the image is {source_w}x{source_h} pixels, more than the {max_pixels} kvd decodes; "
                                 "resize it before sending")
            image = ImageOps.exif_transpose(image)
            image = image.convert("L" if channels == 1 else "RGB")
            if center_crop and height > 0 and width > 0:
                image = _center_crop(image, width / height)
            if height > 0 and width > 0 and image.size != (width, height):
                image = image.resize((width, height), filters[resize])
            array = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"not a readable image ({error})") from None
    return array[..., None] if array.ndim == 2 else array


def _center_crop(image: Any, aspect: float) -> Any:
    """The largest centred box with the target aspect ratio."""
    width, height = image.size
    if width / height > aspect:
        new_width = max(1, round(height * aspect))
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    new_height = max(1, round(width / aspect))
    top = (height - new_height) // 2
    return image.crop((0, top, width, top + new_height))


def image_shape(shape: list[int] | tuple[int, ...]) -> tuple[int, int, int] | None:
    """(H, W, C) of an NHWC image input with 1 or 3 channels, else None."""
    if len(shape) == 4 and shape[-1] in (1, 3):
        return int(shape[1]), int(shape[2]), int(shape[3])
    return None


def to_input(data: bytes | Path, shape: list[int] | tuple[int, ...], preprocess: Preprocess,
             max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One encoded image as the model's (H, W, C) float32 input, decoded, resized and scaled per the manifest."""
    hwc = image_shape(shape)
    if hwc is None:
        raise ImageError(f"the model input {list(shape)} is not an NHWC image with 1 or 3 channels")
    height, width, channels = hwc
    return scale(decode(data, height, width, channels, preprocess.resize, preprocess.center_crop, max_pixels), preprocess.mode)
