"""What TF Serving's API says about kvd's models, for both TF Serving doors (gRPC and REST): which version a
request means (number or label), each version's status, and the ``serving_default`` signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvserve.proto.tf_tensors import V2_TO_TF
from kvserve.server.errors import InvalidArgument, NotFound
from kvserve.server.models.manager import LOADING, READY, ModelVersion

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
LATEST = "latest"


def version_text(manager: Any, name: str, number: int | None, label: str) -> str:
    """The version string the data plane takes ("" = the newest ready one), from a number or a label.

    Labels: those the model manager knows (``resolve_label``, when it offers one), else ``latest`` and
    version numbers written as labels.
    """
    if number is not None:
        if number < 1:
            raise InvalidArgument(f"model '{name}': version must be a positive number, got {number}")
        return str(number)
    if not label:
        return ""
    resolver = getattr(manager, "resolve_label", None)
    if resolver is not None:
        return str(resolver(name, label))
    if label == LATEST:
        return ""
    if label.isdigit():
        return label
    raise NotFound(f"model '{name}' has no version label '{label}'; use a version number or '{LATEST}'")


def check_signature(signature_name: str) -> None:
    if signature_name and signature_name != SIGNATURE:
        raise InvalidArgument(f"serving signature '{signature_name}' not found; kvd models have one signature, '{SIGNATURE}'")


@dataclass
class VersionStatus:
    version: int
    state: str  # TF Serving's ModelVersionStatus.State name
    error_code: int  # tensorflow.error.Code (gRPC status numbers): 0 OK, 2 UNKNOWN
    error_message: str


def statuses(manager: Any, name: str, number: int | None) -> list[VersionStatus]:
    """Every version of ``name`` on disk (or just ``number``), newest first, in TF Serving's states."""
    rows = [entry for entry in manager.entries() if entry.name == name]
    if not rows:
        raise NotFound(manager.not_found_message(name))
    if number is not None:
        rows = [entry for entry in rows if entry.version == number]
        if not rows:
            raise NotFound(f"model '{name}' has no version {number}")
    result = []
    for entry in sorted(rows, key=lambda e: e.version, reverse=True):
        if entry.state == READY:
            result.append(VersionStatus(entry.version, "AVAILABLE", 0, ""))
        elif entry.state == LOADING:
            result.append(VersionStatus(entry.version, "LOADING", 0, ""))
        elif entry.unloaded or entry.reason.startswith("not loaded"):
            result.append(VersionStatus(entry.version, "END", 0, ""))
        else:
            result.append(VersionStatus(entry.version, "END", 2, entry.reason))
    return result


def signature(model: ModelVersion) -> dict[str, list[tuple[str, str, list[int]]]]:
    """``{"inputs": [(name, DT_*, shape)], "outputs": [...]}`` of the model's one signature (-1 = any size)."""
    return {
        "inputs": [(s.name, V2_TO_TF.get(s.datatype, "DT_INVALID"), list(s.shape)) for s in model.inputs],
        "outputs": [(s.name, V2_TO_TF.get(s.datatype, "DT_INVALID"), list(s.shape)) for s in model.outputs],
    }
