"""``make demo`` runs end to end and names the digits correctly (the script it runs, in a fresh kvd)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_correct_digit_labels():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predicted = re.search(r"predicted: (.+)", result.stdout).group(1).split()
    truth = re.search(r"true:\s+(.+)", result.stdout).group(1).split()
    assert len(truth) == 10 and sum(p == t for p, t in zip(predicted, truth)) >= 9
    assert "stopping kvd" in result.stdout
