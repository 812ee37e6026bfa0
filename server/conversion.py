"""Runs one conversion in a child process and relays its progress; the daemon never imports TensorFlow here.

A child that crashes, hangs past the time limit, or answers nonsense fails that upload with a clear status;
its stderr goes to ``convert.log`` in the staging directory and a tail of it to the daemon log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from kvserve.server.child import ChildJob, run_child

CONVERSION = ChildJob(
    module="kvserve.server.convert_child",
    noun="conversion",
    worker="converter process",
    lost="the upload was discarded",
    timeout_hint="raise kvd --conversion-timeout for very large models",
    log_name="convert.log",
)


def run_conversion(job: dict[str, Any], workdir: Path, timeout_s: float) -> Iterator[dict[str, Any]]:
    """Yield the child's stage events; the last item yielded is its result dict (key ``result``)."""
    return run_child(CONVERSION, job, workdir, timeout_s)
