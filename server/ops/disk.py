"""Disk full and quota exceeded, said as such: ENOSPC/EDQUOT anywhere in an upload, a conversion, Configure or a
repository write becomes RESOURCE_EXHAUSTED "repository disk is full (N free)", and a free-space floor
(``--min-free-mb``) refuses uploads before they start filling the disk.

Writers stay atomic on their own (temp file + rename, staging folders removed on failure); this module only
names the failure.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TypeVar

T = TypeVar("T")

from kvserve.server.errors import ResourceExhausted
from kvserve.server.ops import faults

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on ``path``'s file system (the nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return 0


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def disk_full(path: Path) -> ResourceExhausted:
    return ResourceExhausted(f"repository disk is full ({human(free_bytes(path))} free); free space or raise the quota "
                             "on the repository's file system, then retry")


@contextmanager
def guarded(path: Path) -> Iterator[None]:
    """Run a block that writes under ``path``: disk full or quota exceeded becomes ``disk_full``."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise disk_full(path) from None
        raise


def check_floor(path: Path, floor_bytes: int, needed: int = 0) -> None:
    """Refuse early when writing ``needed`` bytes would leave less than ``floor_bytes`` free."""
    if floor_bytes <= 0 and needed <= 0:
        return
    free = free_bytes(path)
    if free - max(needed, 0) < floor_bytes:
        wanted = f" for {human(needed)} more" if needed > 0 else ""
        raise ResourceExhausted(f"repository disk is full ({human(free)} free, kvd keeps {human(floor_bytes)} free "
                                f"(--min-free-mb){wanted}); free space on the repository's file system, then retry")


def inject(point: str) -> None:
    """Test hook: ``KVSERVE_TEST_FAULT=enospc-<point>`` fails this write point as a full disk would."""
    if faults.active(f"enospc-{point}"):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")


def guarded_events(events: Iterator[T], path: Path) -> Iterator[T]:
    """``events`` (a generator that writes under ``path``) with disk full or quota exceeded as ``disk_full``."""
    with guarded(path):
        yield from events
