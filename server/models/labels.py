"""Class labels for a model: parsed from what users have (a text file, one label per line, or a JSON list, or
Keras's ``imagenet_class_index.json``), stored as ``labels.json`` (a JSON list) in the version directory."""

from __future__ import annotations

import json
from typing import Any

from kvserve.server.errors import InvalidArgument

LABELS_FILE = "labels.json"


def parse_labels(data: bytes, filename: str = "labels") -> list[str]:
    """Labels in index order; refuses empty, duplicate-index or non-text input with a clear message."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{filename}: labels must be UTF-8 text (one per line) or JSON") from None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            parsed: Any = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"{filename}: not valid JSON ({error})") from None
        labels = _from_json(parsed, filename)
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise InvalidArgument(f"{filename}: no labels found")
    return labels


def _from_json(parsed: Any, filename: str) -> list[str]:
    if isinstance(parsed, list):
        return [str(item) for item in parsed]
    if isinstance(parsed, dict):  # {"0": ["n01440764", "tench"], ...} or {"0": "tench", ...}
        try:
            indexed = {int(key): value for key, value in parsed.items()}
        except ValueError:
            raise InvalidArgument(f"{filename}: JSON object keys must be class indices (0, 1, ...)") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise InvalidArgument(f"{filename}: class indices must run 0..{len(indexed) - 1} without gaps")
        return [str(value[-1]) if isinstance(value, list) and value else str(value) for _, value in sorted(indexed.items())]
    raise InvalidArgument(f"{filename}: JSON labels must be a list or an object of index -> label")


def check_count(labels: list[str], outputs: list[dict[str, Any]]) -> None:
    """The labels must match the class count (last dim) of the model's first output."""
    classes = outputs[0]["shape"][-1] if outputs and outputs[0]["shape"] else -1
    if classes > 0 and len(labels) != classes:
        raise InvalidArgument(f"{len(labels)} labels given, but the model's output '{outputs[0]['name']}' has {classes} classes")
