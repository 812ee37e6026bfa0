"""Which stored versions of a model are loaded, as OVMS and Triton say it: the latest N, all, or specific ones.

A policy only chooses among the versions on disk; which of them a client gets when it names no version is the
manager's business (a pin, else the highest ready one the policy loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvserve.server.errors import InvalidArgument

KINDS = ("latest", "all", "specific")


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = field(default_factory=tuple)

    def select(self, stored: list[int]) -> list[int]:
        """The stored versions this policy loads, ascending."""
        ordered = sorted(stored)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count:] if self.count > 0 else []

    def describe(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return "specific " + ",".join(map(str, self.versions))
        return f"latest {self.count}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "latest":
            return {"latest": self.count}
        if self.kind == "specific":
            return {"specific": list(self.versions)}
        return {"all": True}


def parse_policy(value: Any, where: str = "version_policy") -> VersionPolicy:
    """From a config value: ``"all"``, ``"latest 2"``, ``"specific 1,3"``, ``{latest = 2}``, ``{specific = [1, 3]}``,
    ``{all = true}``. Anything else is refused with the forms that work."""
    forms = "use \"all\", \"latest N\", \"specific 1,3\", {latest = N}, {specific = [1, 3]} or {all = true}"
    if isinstance(value, str):
        words = value.replace(",", " ").split()
        if words == ["all"]:
            return VersionPolicy("all")
        if len(words) == 2 and words[0] == "latest":
            return _latest(words[1], where, forms)
        if len(words) >= 2 and words[0] == "specific":
            return _specific(words[1:], where, forms)
    elif isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "all" and arg is True:
            return VersionPolicy("all")
        if key == "latest" and isinstance(arg, int) and not isinstance(arg, bool):
            return _latest(str(arg), where, forms)
        if key == "specific" and isinstance(arg, list):
            return _specific([str(v) for v in arg], where, forms)
    raise InvalidArgument(f"{where}: {value!r} is not a version policy; {forms}")


def _latest(text: str, where: str, forms: str) -> VersionPolicy:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidArgument(f"{where}: 'latest' needs a count of at least 1, not {text!r}; {forms}")
    return VersionPolicy("latest", int(text))


def _specific(texts: list[str], where: str, forms: str) -> VersionPolicy:
    if not texts or not all(t.isascii() and t.isdigit() and int(t) > 0 for t in texts):
        raise InvalidArgument(f"{where}: 'specific' needs version numbers (1, 2, ...), not {texts!r}; {forms}")
    return VersionPolicy("specific", versions=tuple(sorted({int(t) for t in texts})))
