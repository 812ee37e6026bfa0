"""A benchmark report as a chart for a slide: latency (lower is better) beside throughput (higher is better).

Horizontal bars on log scales (a 100 ms Keras bar and a 0.1 ms OpenVINO bar both stay visible), the value at
the end of every bar, each OpenVINO row's speedup over every measured baseline, and a title that says what
was measured, where and when. matplotlib is imported here only, and only when a chart is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvserve.client.benchmark_report import BASELINE_NAMES, BASELINES, ratio_text, row_label, speedups

BASELINE_COLOR = "#9e9e9e"
OPENVINO_COLOR = "#1565c0"
SHORT = {"keras": "predict", "keras-call": "model(x)", "tf": "tf.function"}


def _ms_text(ms: float) -> str:
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def _fps_text(fps: float) -> str:
    return f"{fps:,.0f}/s" if fps >= 100 else f"{fps:.1f}/s"


def _log_limits(values: list[float], long_text: list[bool]) -> tuple[float, float]:
    """Log-axis limits leaving room after each bar for its text: long (speedup) labels need half the width."""
    import math

    low = min(values) / 2
    width = max(math.log10(v / low) / (0.45 if long else 0.75) for v, long in zip(values, long_text))
    return low, low * 10 ** max(width, 1.0)


def title_lines(report: dict[str, Any], facts: dict[str, str]) -> tuple[str, str]:
    """(title, subtitle): the model and its precision; the CPU, date, iterations, batch, and where it ran."""
    batch = report["results"][0].get("batch", 1) if report["results"] else 1
    title = f"{report['name']} v{report['version']} ({facts.get('precision', '?')} IR): Keras vs OpenVINO"
    subtitle = (f"{facts.get('cpu', 'CPU unknown')} · {facts.get('date', '')} · {facts.get('iterations', '?')} timed iterations "
                f"per row, batch {batch} · measured in-process on the server (no network)")
    return title, subtitle


def write_plot(report: dict[str, Any], path: Path, facts: dict[str, str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    facts = facts or {}
    rows = report["results"]
    labels = [row_label(r) for r in rows]
    colors = [BASELINE_COLOR if r["backend"] in BASELINES else OPENVINO_COLOR for r in rows]
    latencies = [r["p50_s"] * 1e3 for r in rows]
    rates = [r["fps"] for r in rows]
    height = 1.6 + 0.55 * len(rows)
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(15, max(4.5, height)), sharey=True,
                                                 gridspec_kw={"width_ratios": [1.35, 1]})
    positions = list(range(len(rows)))[::-1]  # first row on top

    latency.barh(positions, latencies, color=colors)
    latency.set_xscale("log")
    latency.set_xlim(*_log_limits(latencies, [r["backend"] not in BASELINES for r in rows]))
    for y, row, ms in zip(positions, rows, latencies):
        text = f"{_ms_text(ms)} (avg {_ms_text(row['avg_s'] * 1e3)})"
        if row["backend"] not in BASELINES:
            ratio = speedups(report, row)
            if ratio:
                text += "   " + ", ".join(f"{ratio_text(ratio[b])} vs {SHORT[b]}" for b in BASELINES if b in ratio)
        latency.text(ms * 1.12, y, text, va="center", fontsize=9, fontweight="bold" if row["backend"] not in BASELINES else None)
    latency.set_xlabel("median latency per call, ms (log scale; lower is better)")
    latency.set_title("Latency, one call at a time", fontsize=11)

    throughput.barh(positions, rates, color=colors)
    throughput.set_xscale("log")
    throughput.set_xlim(*_log_limits(rates, [False] * len(rates)))
    for y, fps in zip(positions, rates):
        throughput.text(fps * 1.12, y, _fps_text(fps), va="center", fontsize=9)
    throughput.set_xlabel("inputs per second (log scale; higher is better)")
    throughput.set_title("Throughput (OpenVINO: all requests in flight)", fontsize=11)

    latency.set_yticks(positions, labels)
    for axes in (latency, throughput):
        axes.grid(axis="x", which="major", alpha=0.3)
        axes.set_axisbelow(True)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    title, subtitle = title_lines(report, facts)
    figure.suptitle(title, fontsize=14, fontweight="bold", x=0.01, ha="left", y=0.995)
    figure.text(0.01, 1 - 0.5 / figure.get_figheight(), subtitle, fontsize=9.5, color="#444444", ha="left")
    baseline_text = "baselines (grey): " + ", ".join(BASELINE_NAMES[b] for b in BASELINES) + "; speedups are ratios of medians"
    figure.text(0.01, 0.01, f"{baseline_text}; input: {report.get('input', '')}", fontsize=8, color="#666666", ha="left")
    figure.tight_layout(rect=(0, 0.03, 1, 1 - 0.55 / figure.get_figheight()))
    figure.savefig(path, dpi=150)
    plt.close(figure)
