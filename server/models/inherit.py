"""Inherit on re-upload: a new version of a model keeps what the operator set on the previous one (labels,
preprocessing chosen by a user, device preference, performance hint, batching) unless the upload says
otherwise, so a routine re-upload never silently drops labels or serves raw scores. The upload's final event
says what was inherited, and what could not be (labels whose count no longer matches the outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from kvserve.server.errors import InvalidArgument, KvError
from kvserve.server.models.labels import check_count
from kvserve.server.models.repository import Repository, is_name

PREPROCESS_KEYS = ("mode", "resize", "center_crop")


class _Spec(Protocol):
    name: str
    devices: list[str]
    performance_hint: str
    preprocess: dict[str, Any] | None
    labels: bytes


@dataclass
class Inherited:
    """What a new upload takes over from version ``version`` (None: a first upload, nothing to inherit)."""

    version: int | None = None
    preprocess: dict[str, Any] | None = None
    labels: list[str] | None = None
    batching: dict[str, Any] | None = None
    taken: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def apply_labels(self, manifest: dict[str, Any]) -> None:
        """Labels, if the new outputs still have as many classes; else say why they were dropped."""
        if not self.labels:
            return
        try:
            check_count(self.labels, manifest["outputs"])
        except InvalidArgument as error:
            self.dropped.append(f"labels ({error})")
            return
        manifest["labels"] = self.labels
        self.taken.append(f"labels ({len(self.labels)})")

    def apply_rest(self, manifest: dict[str, Any]) -> None:
        if self.batching:
            manifest["batching"] = self.batching
            self.taken.append("batching")

    def summary(self) -> str:
        parts = []
        if self.taken:
            parts.append(f"inherited from version {self.version}: {', '.join(self.taken)}")
        if self.dropped:
            parts.append(f"not inherited: {', '.join(self.dropped)}")
        return "; ".join(parts)


def inherit(repository: Repository, spec: _Spec) -> Inherited:
    """Fill what ``spec`` leaves unsaid from the latest stored version; returns what else to carry over."""
    if not is_name(spec.name):
        return Inherited()
    versions = repository.versions(spec.name)
    if not versions:
        return Inherited()
    try:
        previous = repository.read_manifest(spec.name, versions[-1])
    except (KvError, OSError):
        return Inherited()  # a damaged previous version passes nothing on
    found = Inherited(version=versions[-1])
    if not [d for d in spec.devices if d.strip()] and previous.get("devices"):
        spec.devices = list(previous["devices"])
        found.taken.append(f"devices {','.join(spec.devices)}")
    if not spec.performance_hint and previous.get("performance_hint"):
        spec.performance_hint = str(previous["performance_hint"])
        found.taken.append(f"performance hint {spec.performance_hint}")
    preprocess = previous.get("preprocess")
    if spec.preprocess is None and isinstance(preprocess, dict) and preprocess.get("source") == "user":
        found.preprocess = {key: preprocess[key] for key in PREPROCESS_KEYS if key in preprocess}
        found.taken.append(f"preprocessing {found.preprocess.get('mode', 'none')}")
    if not spec.labels and isinstance(previous.get("labels"), list):
        found.labels = [str(label) for label in previous["labels"]]
    if isinstance(previous.get("batching"), dict):
        found.batching = previous["batching"]
    return found
