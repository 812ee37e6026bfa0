"""``kvctl benchmark``: the seed tutorial's table (Keras vs TF vs OpenVINO) for a model kvd serves.

Its own module so ``kvctl``'s main file stays small; registered with ``cli.add_command``. The helpers of
``kvserve.client.cli`` are imported inside the command (that module imports this one), and matplotlib only
when a plot is asked for, so ``kvctl --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kvserve.client.benchmark_report import BASELINES, ratio_text, speedups

# The keys of each row of ``--json``, in order (seconds kept for scripts written against them).
JSON_KEYS = ("backend", "precision", "avg_s", "p50_s", "p99_s", "fps", "speedup_vs_keras")


def json_rows(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{"results": [...]}``: JSON_KEYS, then avg_ms/p50_ms/p99_ms and ``speedup_vs`` (median-latency ratio per measured baseline)."""
    return {"results": [{**{key: row[key] for key in JSON_KEYS}, "avg_ms": row["avg_s"] * 1e3, "p50_ms": row["p50_s"] * 1e3,
                         "p99_ms": row["p99_s"] * 1e3, "speedup_vs": speedups(report, row)} for row in report["results"]]}


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    measured = [b for b in BASELINES if any(r["backend"] == b for r in report["results"])]
    rows = []
    for row in report["results"]:
        ratio = speedups(report, row)
        rows.append([row["backend"], row["precision"], _ms(row["avg_s"]), _ms(row["p50_s"]), _ms(row["p99_s"]),
                     f"{row['fps']:.1f}", *[ratio_text(ratio[b]) if b in ratio else "-" for b in measured], row["execution_precision"]])
    return rows


def table_columns(report: dict[str, Any]) -> list[str]:
    measured = [b for b in BASELINES if any(r["backend"] == b for r in report["results"])]
    return ["backend", "precision", "avg ms", "p50 ms", "p99 ms", "fps", *[f"vs {b}" for b in measured], "computes"]


@click.command()
@click.option("--model", "-m", required=True, help="model name", shell_complete=lambda *a: _complete(*a))
@click.option("--version", default="", help="model version (default: latest)")
@click.option("--iterations", default=20, show_default=True, type=click.IntRange(min=1), help="timed iterations per row")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="untimed iterations before them")
@click.option("--backends", default="",
              help="comma-separated: keras (predict), keras-call (model(x)), tf (tf.function), OpenVINO devices (CPU, GPU); default: all that can run")
@click.option("--precisions", default="", help="OpenVINO rows: fp32, default, fp16, int8; default: all the model has or can derive")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="input .npy (batch first); default: seeded random")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="batch size of the seeded random input")
@click.option("--json", "as_json", is_flag=True,
              help='print {"results": [{backend, precision, avg_s, p50_s, p99_s, fps, speedup_vs_keras, avg_ms, p50_ms, p99_ms, speedup_vs}]}')
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="also write a chart (PNG) for a slide: latency and throughput on log scales, values on the bars, speedups")
@click.pass_obj
def benchmark(state: Any, model: str, version: str, iterations: int, warmup: int, backends: str, precisions: str,
              sample: Path | None, batch: int, as_json: bool, plot: Path | None) -> None:
    """Compare Keras predict(), Keras model(x), tf.function and OpenVINO (per device and precision) on MODEL.

    Measured in-process on the server (a child process of kvd), so no network time is included.
    """
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

        write_plot(report, plot, chart_facts(state.client, report, iterations))
    if as_json:
        print_json(json_rows(report))
        return
    _table(table_columns(report), table_rows(report),
           title=f"{report['name']} v{report['version']}, {report['input']}")
    if plot is not None:
        _console().print(f"chart written to {plot}")


def _complete(*args: Any) -> list[Any]:
    from kvserve.client.cli import complete_model_names

    return complete_model_names(*args)


def chart_facts(client: Any, report: dict[str, Any], iterations: int) -> dict[str, str]:
    """What the chart's title states: the model's precision, the server's CPU, today's date, the iterations."""
    import datetime

    facts = {"iterations": str(iterations), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    try:
        facts["precision"] = client.describe(report["name"], report["version"])["manifest"].get("precision", "?")
        cpu = next((d for d in client.devices() if d["name"] == "CPU" and d["available"]), None)
        facts["cpu"] = (cpu or {}).get("full_name") or "CPU unknown"
    except Exception:  # noqa: BLE001 - a chart without the CPU name beats no chart
        facts.setdefault("precision", "?")
        facts.setdefault("cpu", "CPU unknown")
    return facts
