"""Runs one conversion in a child process and relays its progress; the daemon never imports TensorFlow here.

A child that crashes, hangs past the time limit, or answers nonsense fails that upload with a clear status;
its stderr goes to ``convert.log`` in the staging directory and a tail of it to the daemon log. The child
exits by itself when kvd dies (it watches its parent), and an upload that is abandoned kills it at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from kvserve.server.uploads.child import ChildJob, Launcher, run_child
from kvserve.server.ops.limits import Abandon

CONVERSION = ChildJob(
    module="kvserve.server.uploads.convert_child",
    noun="conversion",
    worker="converter process",
    lost="the upload was discarded",
    timeout_hint="raise kvd --conversion-timeout for very large models",
    log_name="convert.log",
)


def converter_launcher(warm: bool, label: str = "", memory_bytes: int = 0) -> Launcher:
    """Converter children; ``warm`` keeps the next one started with TensorFlow imported; ``memory_bytes`` caps
    each child's address space (--child-memory-mb)."""
    return Launcher(CONVERSION, warm=warm, label=label, memory_bytes=memory_bytes)


def run_conversion(job: dict[str, Any], workdir: Path, timeout_s: float, launcher: Launcher,
                   abandon: Abandon | None = None) -> Iterator[dict[str, Any]]:
    """Yield the child's stage events; the last item yielded is its result dict (key ``result``).

    Setting ``abandon`` kills the child at once and raises its error here.
    """
    return run_child(launcher, job, workdir, timeout_s, abandon=abandon)
