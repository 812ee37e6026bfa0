"""Parity inputs that prove something: drawn from the distribution the model will see, checked for degeneracy.

A parity check is only as good as its inputs. Uniform [0, 1) noise gives many real models (a ResNet whose
BatchNorm expects caffe-style pixels, a text model whose tokens must lie in its vocabulary) a constant output,
and then a wrong IR "agrees" to 0.0. So candidates are tried most realistic first: the manifest's image
preprocessing applied to image-like pixels, raw 0-255 pixels for models that rescale inside, integer tokens
within an Embedding's vocabulary, strings from a TextVectorization vocabulary, booleans; then generic ranges.
The first candidate whose reference outputs vary across the batch (and are finite) is used; if none does, the
check is recorded as weak, never as a pass.

Hints come from the converter (``SourceModel.details["input_hints"]``): ``{input name: {"kind": "pixels" |
"tokens" | "strings", "high": int, "vocabulary": [str]}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from kvserve.plugins.types import TensorSpec
from kvserve.proto.images import image_shape, scale
from kvserve.proto.tensors import DATATYPES

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# Dynamic non-batch dims (sequence lengths, free image sides) get this size.
FREE_DIM = 16
# Outputs whose spread across the batch is below this fraction of their magnitude count as constant.
CONSTANT_FRACTION = 1e-6
# Outputs whose every value is this close to 0 or +-1 count as saturated.
SATURATED = 1e-4
WORDS = ("the", "a", "model", "server", "fast", "answer", "keras", "image", "good", "bad", "not", "very", "of", "to",
         "and", "is", "was", "great", "terrible", "movie", "data", "test", "hello", "world", "open", "vino")


@dataclass
class Candidate:
    feeds: dict[str, np.ndarray]
    description: str


@dataclass
class ChosenInputs:
    """The parity batch to use, what it is, the reference's answers on it, and why the check is weak (if it is)."""

    feeds: dict[str, np.ndarray]
    description: str
    reference_outputs: dict[str, np.ndarray]
    weak: str | None
    tried: list[str]


def concrete_shape(spec: TensorSpec, batch: int) -> list[int]:
    """``spec``'s shape with the batch dim set to ``batch`` and other dynamic dims to FREE_DIM."""
    return [batch if i == 0 else (FREE_DIM if d < 0 else int(d)) for i, d in enumerate(spec.shape)] if spec.shape else []


# Rows in a parity batch. A converted model's error is heavy-tailed across inputs (EfficientNetV2B0 with fp16
# weights in f32: median 8e-4 of the output range, but one image in twenty beyond 0.02), so 8 rows passed a rung
# that fresh inputs then failed. Small inputs get up to MAX_ROWS; large ones as many as fit ELEMENTS (the volume
# of 64 RGB images of 32x32), at least MIN_ROWS, so the check costs about the same for every model.
MIN_ROWS, MAX_ROWS, ELEMENTS = 8, 64, 64 * 32 * 32 * 3


def parity_rows(specs: list[TensorSpec]) -> int:
    """How many rows the parity batch of a model with these inputs has (MIN_ROWS..MAX_ROWS by input volume)."""
    per_row = sum(int(np.prod(concrete_shape(spec, 1)[1:], dtype=np.int64)) for spec in specs if spec.shape)
    return max(MIN_ROWS, min(MAX_ROWS, ELEMENTS // max(per_row, 1)))


def fixed_batch(specs: list[TensorSpec]) -> int | None:
    """The batch size a model with a fixed batch dim accepts (None when the batch dim is dynamic)."""
    sizes = {int(s.shape[0]) for s in specs if s.shape and s.shape[0] >= 0}
    return min(sizes) if sizes else None


def synthetic_pixels(rng: np.random.Generator, count: int, height: int, width: int, channels: int) -> np.ndarray:
    """Image-like 0-255 pixels, every image different, neighbouring pixels correlated as in photographs. Rows
    alternate two kinds of scene: smooth colour fields (a 4x4 grid interpolated) and flat regions with hard edges
    (the grid upsampled blockwise), each plus fine noise. Both matter: a model can agree within 2e-3 on smooth
    fields and be 0.2 away on edges (measured: EfficientNetB0 with fp16 weights), and a parity batch of one
    kind would pass a rung the other kind fails."""
    grid = rng.uniform(0, 255, size=(count, 4, 4, channels))
    ys, xs = np.linspace(0, 3, height), np.linspace(0, 3, width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, 3), np.minimum(x0 + 1, 3)
    fy, fx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    rows = grid[:, y0] * (1 - fy) + grid[:, y1] * fy
    field = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    by, bx = np.arange(height) * 4 // max(height, 1), np.arange(width) * 4 // max(width, 1)
    blocks = grid[:, by][:, :, bx]
    field[1::2] = blocks[1::2]
    return np.clip(field + rng.normal(0, 16, size=field.shape), 0, 255).astype(np.float32)


def _float_candidates(spec: TensorSpec, shape: list[int], rng: np.random.Generator, mode: str, user_mode: bool,
                      hint: Mapping[str, Any]) -> Iterator[tuple[np.ndarray, str]]:
    """Float arrays for one input, most realistic first."""
    image = image_shape(spec.shape)
    if image is not None:
        h, w, c = (shape[1], shape[2], shape[3])
        if hint.get("kind") == "pixels":
            yield synthetic_pixels(rng, shape[0], h, w, c), "image-like pixels 0-255 (the model rescales them itself)"
        if mode != "none" or user_mode:
            yield scale(synthetic_pixels(rng, shape[0], h, w, c), mode), f"image-like pixels with '{mode}' preprocessing"
    yield rng.random(shape, dtype=np.float32), "uniform [0, 1)"
    if image is not None:
        yield synthetic_pixels(rng, shape[0], shape[1], shape[2], shape[3]), "image-like pixels 0-255"
    yield rng.uniform(-1, 1, size=shape).astype(np.float32), "uniform [-1, 1)"
    yield rng.normal(0, 1, size=shape).astype(np.float32), "standard normal"
    yield rng.normal(0, 50, size=shape).astype(np.float32), "normal, sd 50"


def _one_input(spec: TensorSpec, shape: list[int], rng: np.random.Generator, mode: str, user_mode: bool,
               hint: Mapping[str, Any]) -> list[tuple[np.ndarray, str]]:
    dtype = DATATYPES[spec.datatype]
    if spec.datatype == "BYTES":
        vocabulary = [w for w in hint.get("vocabulary") or () if w and not w.startswith("[")] or list(WORDS)
        count = int(np.prod(shape)) if shape else 1
        texts = [" ".join(rng.choice(vocabulary, size=int(rng.integers(2, 9)))).encode() for _ in range(count)]
        source = "vocabulary" if hint.get("vocabulary") else "common English words"
        return [(np.array(texts, dtype=object).reshape(shape), f"sentences of {source}")]
    if dtype.kind == "b":
        return [(rng.random(shape) > 0.5, "random booleans")]
    if dtype.kind in "iu":
        high = int(hint.get("high") or 0)
        if hint.get("kind") == "tokens" and high > 1:
            low = 1 if high > 2 else 0  # 0 is often padding, masked away
            return [(rng.integers(low, high, size=shape).astype(dtype), f"tokens in [{low}, {high})"),
                    (rng.integers(0, 2, size=shape).astype(dtype), "integers 0-1")]
        info = np.iinfo(dtype)
        pixels = []
        if image_shape(spec.shape) is not None and info.max >= 255:  # a uint8 (or int) image: 0-255 pixels first
            pixels = [(synthetic_pixels(rng, *shape).round().astype(dtype), "image-like integer pixels 0-255")]
        return [*pixels, (rng.integers(0, min(10, int(info.max)) + 1, size=shape).astype(dtype), "integers 0-10"),
                (rng.integers(0, 2, size=shape).astype(dtype), "integers 0-1"),
                (rng.integers(max(int(info.min), -100), min(int(info.max), 100) + 1, size=shape).astype(dtype), "integers -100..100")]
    return [(array.astype(dtype), text) for array, text in _float_candidates(spec, shape, rng, mode, user_mode, hint)]


def candidates(specs: list[TensorSpec], batch: int, preprocess: Mapping[str, Any] | None = None,
               hints: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0) -> list[Candidate]:
    """Parity batches to try, most realistic first; candidate k uses each input's k-th option (or its last)."""
    rng = np.random.default_rng(seed)
    preprocess = dict(preprocess or {})
    mode, user_mode = str(preprocess.get("mode", "none")), str(preprocess.get("source", "")).startswith(("user", "suggested"))
    per_input = {spec.name: _one_input(spec, concrete_shape(spec, batch), rng, mode, user_mode, (hints or {}).get(spec.name, {}))
                 for spec in specs}
    depth = max((len(options) for options in per_input.values()), default=0)
    found = []
    for k in range(depth):
        chosen = {name: options[min(k, len(options) - 1)] for name, options in per_input.items()}
        text = "; ".join(f"{name}: {desc}" for name, (_, desc) in chosen.items()) if len(chosen) > 1 else next(iter(chosen.values()))[1]
        found.append(Candidate({name: array for name, (array, _) in chosen.items()}, f"{text}, seed {seed}"))
    return found


def degenerate(outputs: Mapping[str, np.ndarray]) -> str | None:
    """Why these reference outputs cannot prove anything (None when they can): NaN/inf, or an output that is the
    same for every row of the batch."""
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fciub":
            continue  # strings: compared exactly, constant or not
        array = array.astype(np.float64)
        if not np.all(np.isfinite(array)):
            return f"output '{name}' has NaN or inf"
        if array.ndim == 0 or array.shape[0] < 2 or array.size == 0:
            continue
        across = float(np.max(np.ptp(array, axis=0)))
        if across <= CONSTANT_FRACTION * max(float(np.max(np.abs(array))), 1e-30):
            return f"output '{name}' is the same for every input"
        if value.dtype.kind in "fc" and _saturated(array):
            return f"output '{name}' is saturated (every value 0 or +-1): these inputs are outside the model's range"
    return None


def _saturated(array: np.ndarray) -> bool:
    """Every value at 0 or +-1 (within SATURATED): a softmax/sigmoid/tanh pushed to its ends, where any precision
    gives the same answer, so agreement proves nothing about the values real inputs produce."""
    magnitude = np.abs(array)
    return bool(np.all(np.minimum(magnitude, np.abs(magnitude - 1.0)) <= SATURATED))


def run_chunked(predict: Predict, feeds: Mapping[str, np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """``predict`` over ``feeds`` ``chunk`` rows at a time, outputs concatenated (scalar inputs in one call)."""
    rows = min((a.shape[0] for a in feeds.values() if a.ndim), default=0)
    if rows <= chunk:
        return {k: np.asarray(v) for k, v in predict(dict(feeds)).items()}
    parts = [predict({n: a[i : i + chunk] for n, a in feeds.items()}) for i in range(0, rows, chunk)]
    return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}


def choose(reference: Predict, specs: list[TensorSpec], batch: int = 8, preprocess: Mapping[str, Any] | None = None,
           hints: Mapping[str, Mapping[str, Any]] | None = None, user: tuple[dict[str, np.ndarray], str] | None = None,
           chunk: int = 16) -> ChosenInputs:
    """The first candidate (user samples alone, when given) whose reference outputs prove something."""
    chunk = min(chunk, fixed_batch(specs) or chunk)
    options = [Candidate(*user)] if user else candidates(specs, batch, preprocess, hints)
    tried: list[str] = []
    first: ChosenInputs | None = None
    for option in options:
        try:
            outputs = run_chunked(reference, option.feeds, chunk)
        except Exception as error:  # noqa: BLE001 - inputs this model rejects: try the next kind
            tried.append(f"{option.description}: the original model rejected them ({_first_line(error)})")
            continue
        problem = degenerate(outputs)
        chosen = ChosenInputs(option.feeds, option.description, outputs, problem, tried)
        if problem is None:
            return chosen
        tried.append(f"{option.description}: {problem}")
        first = first or chosen
    if first is None:
        raise ValueError("the original model rejected every parity input tried: " + "; ".join(tried))
    first.weak = "reference outputs prove nothing on any input tried (" + "; ".join(tried) + ")"
    return first


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
