"""A benchmark report as a bar chart for a slide: latency (lower is better) beside throughput (higher is better).

matplotlib is imported here only, and only when a chart is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['backend']}\n{r['precision']}" for r in rows]
    colors = ["#9e9e9e" if r["backend"] in ("keras", "tf") else "#1565c0" for r in rows]
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(rows) * 2), 4.8))
    bars = latency.bar(labels, [r["avg_s"] * 1000 for r in rows], color=colors)
    for bar, row in zip(bars, rows):
        if row["speedup_vs_keras"]:
            latency.annotate(f"{row['speedup_vs_keras']:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize=9)
    latency.set_ylabel("average latency per call (ms)")
    latency.set_title("Latency (lower is better; labels: speedup over Keras)")
    throughput.bar(labels, [r["fps"] for r in rows], color=colors)
    throughput.set_ylabel("inputs per second")
    throughput.set_title("Throughput (higher is better)")
    for axes in (latency, throughput):
        axes.tick_params(axis="x", labelsize=8)
        axes.grid(axis="y", alpha=0.3)
        axes.set_axisbelow(True)
    figure.suptitle(f"{report['name']} v{report['version']}: {report['input']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
