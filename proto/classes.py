"""Top-k classes, and Triton's classification strings ``"score:index[:label]"`` that carry them on the wire.

kvd formats them (a requested output with the ``classification`` parameter, or the request's ``top_k``) and
kvctl parses them, so a service gets only the best k instead of the whole score vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopClass:
    index: int
    score: float
    label: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "score": self.score, "label": self.label}


def top_k(scores: np.ndarray, k: int, labels: list[str] | None = None) -> list[list[TopClass]]:
    """Per batch row (first axis), the k best classes over the remaining axes, best first."""
    flat = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = max(1, min(k, flat.shape[1]))
    rows = []
    for row in flat:
        best = np.argpartition(-row, k - 1)[:k]
        best = best[np.argsort(-row[best], kind="stable")]
        rows.append([TopClass(int(i), float(row[i]), labels[i] if labels and i < len(labels) else None) for i in best])
    return rows


def encode(rows: list[list[TopClass]]) -> np.ndarray:
    """Rows of classes as a BYTES array (batch, k) of ``score:index[:label]`` strings."""
    width = max((len(row) for row in rows), default=0)
    out = np.empty((len(rows), width), dtype=object)
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            text = f"{item.score:.9g}:{item.index}" + (f":{item.label}" if item.label is not None else "")
            out[r, c] = text.encode()
    return out


def decode(array: np.ndarray) -> list[list[TopClass]]:
    """Parse a classification output back into rows of classes (labels may contain ':')."""
    rows = []
    for row in array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1):
        parsed = []
        for item in row:
            parts = (item.decode() if isinstance(item, bytes) else str(item)).split(":", 2)
            parsed.append(TopClass(int(parts[1]), float(parts[0]), parts[2] if len(parts) > 2 else None))
        rows.append(parsed)
    return rows
