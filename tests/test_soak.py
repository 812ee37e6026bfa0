"""A short soak (bench/soak.py, ~12 s): infers, reloads, uploads and deletes at once; nothing unexpected."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from opsutil import copy_model

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


@pytest.mark.slow
def test_short_soak(digits, served_digits, tmp_path):
    spec = importlib.util.spec_from_file_location("kvserve_soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = soak  # dataclasses look their module up there
    spec.loader.exec_module(soak)
    copy_model(served_digits.repository, "digits", tmp_path / "repo", as_name="steady")  # no upload before the clock starts
    figures = soak.run(seconds=12, clients=2, model=digits.paths["h5"], workdir=tmp_path, infer_pause=0.005)
    assert not figures["unexpected_errors"], figures
    # counts depend on the machine's speed: only that each kind of operation ran, and every answer was right
    assert figures["infers"] >= 1 and figures["uploads"] >= 1 and figures["reloads"] >= 1, figures
    assert figures["kvd_exit_code"] == 0 and figures["passed"], figures
