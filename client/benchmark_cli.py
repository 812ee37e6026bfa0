"""``kvctl benchmark``: the seed tutorial's table (Keras vs TF vs OpenVINO) for a model kvd serves.

Its own module so ``kvctl``'s main file stays small; registered with ``cli.add_command``. The helpers of
``kvserve.client.cli`` are imported inside the command (that module imports this one), and matplotlib only
when a plot is asked for, so ``kvctl --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

# The keys of each row of ``--json``, in order.
JSON_KEYS = ("backend", "precision", "avg_s", "p50_s", "p99_s", "fps", "speedup_vs_keras")


def json_rows(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{"results": [...]}`` with exactly JSON_KEYS per row."""
    return {"results": [{key: row[key] for key in JSON_KEYS} for row in report["results"]]}


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row in report["results"]:
        speedup = f"{row['speedup_vs_keras']:.1f}x" if row["speedup_vs_keras"] else "-"
        rows.append([row["backend"], row["precision"], f"{row['avg_s']:.3g}", f"{row['p50_s']:.3g}", f"{row['p99_s']:.3g}",
                     f"{row['fps']:.1f}", speedup, row["execution_precision"]])
    return rows


@click.command()
@click.option("--model", "-m", required=True, help="model name")
@click.option("--version", default="", help="model version (default: latest)")
@click.option("--iterations", default=20, show_default=True, help="timed iterations per row")
@click.option("--warmup", default=3, show_default=True, help="untimed iterations before them")
@click.option("--backends", default="", help="comma-separated: keras, tf, OpenVINO devices (CPU, GPU); default: all that can run")
@click.option("--precisions", default="", help="OpenVINO rows: fp32, default, fp16, int8; default: all the model has or can derive")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="input .npy (batch first); default: seeded random")
@click.option("--batch", default=1, show_default=True, help="batch size of the seeded random input")
@click.option("--json", "as_json", is_flag=True, help='print {"results": [{backend, precision, avg_s, p50_s, p99_s, fps, speedup_vs_keras}]}')
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="also write a bar chart (PNG) of latency and throughput")
@click.pass_obj
def benchmark(state: Any, model: str, version: str, iterations: int, warmup: int, backends: str, precisions: str,
              sample: Path | None, batch: int, as_json: bool, plot: Path | None) -> None:
    """Compare Keras predict, TensorFlow and OpenVINO (per device and precision) on MODEL, on the server."""
    from kvserve.client.cli import _console, _table, print_json

    split = lambda text: [part.strip() for part in text.split(",") if part.strip()]  # noqa: E731
    with _console(stderr=True).status("benchmark: starting") as status:
        def on_event(event: Any) -> None:
            if event.result is not None:
                status.update(f"benchmark: {event.result['backend']} {event.result['precision']} done")
            elif event.message:
                status.update(f"benchmark: {event.message}")

        report = state.client.benchmark(model, version=version, iterations=iterations, warmup=warmup, backends=split(backends),
                                        precisions=split(precisions), sample=sample, batch=batch, progress=on_event, timeout=None)
    if plot is not None:
        from kvserve.client.benchmark_plot import write_plot

        write_plot(report, plot)
    if as_json:
        print_json(json_rows(report))
        return
    _table(["backend", "precision", "avg s", "p50 s", "p99 s", "fps", "speedup", "computes"], table_rows(report),
           title=f"{report['name']} v{report['version']}, {report['input']}")
    if plot is not None:
        _console().print(f"chart written to {plot}")
