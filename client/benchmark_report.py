"""What a benchmark report means: speedups against each baseline, and the facts a chart's title needs.

Three baselines, because one flatters: Keras ``predict()`` (what the seed tutorial timed; ~tens of ms of
per-call set-up at batch 1), Keras called directly (``model(x)``) and the traced ``tf.function`` (kvd's TF
backend). Every other row gets its speedup over each baseline that was measured.
"""

from __future__ import annotations

from typing import Any

BASELINES = ("keras", "keras-call", "tf")
BASELINE_NAMES = {"keras": "Keras predict()", "keras-call": "Keras model(x)", "tf": "tf.function"}


def baselines(report: dict[str, Any]) -> dict[str, float]:
    """Median latency (p50_s) of each baseline row that was measured, by backend name."""
    return {r["backend"]: r["p50_s"] for r in report["results"] if r["backend"] in BASELINES and r["p50_s"] > 0}


def speedups(report: dict[str, Any], row: dict[str, Any]) -> dict[str, float]:
    """``row``'s speedup over each measured baseline: ratio of median latencies (a shared machine's stalls
    inflate averages; the median is what a call usually costs)."""
    return {name: p50 / row["p50_s"] for name, p50 in baselines(report).items() if row["p50_s"] > 0}


def row_label(row: dict[str, Any]) -> str:
    if row["backend"] in BASELINE_NAMES:
        return BASELINE_NAMES[row["backend"]]
    return f"OpenVINO {row['backend']} {row['precision']}"


def ratio_text(ratio: float) -> str:
    """1.3x, 72x, 9,102x: precision that means something at each size."""
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"
