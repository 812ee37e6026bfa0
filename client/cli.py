"""``kvctl``: the command line for kvd. Thin: every command is one or two Client calls and a table.

Exit codes: 0 success; 1 the server refused or failed the request; 2 usage error; 3 partial failure (some
inputs failed); 4 kvd unreachable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click
import grpc
from kvserve.client import lifecycle_cli
import numpy as np

from kvserve.client.client import Client, default_server, parse_address
from kvserve.client.errors import InvalidAddress, KvserveError, Unreachable
from kvserve.client.inputs import INPUT_SUFFIXES, InputError, NamedBatch, expand, load_input
from kvserve.client.progress import UploadView
from kvserve.proto.images import MODES, RESIZE_METHODS, Preprocess

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_UNREACHABLE = 4


def complete_model_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of model names, asked from the kvd that --server / KVSERVE_SERVER names (quietly: none on error)."""
    from click.shell_completion import CompletionItem

    root = ctx.find_root().params
    try:
        with Client(root.get("server") or default_server(), timeout=3, token=root.get("token"), ca=root.get("ca"),
                    cert=root.get("cert"), key=root.get("key")) as client:
            names = sorted({m["name"] for m in client.list_models()})
    except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


class State:
    def __init__(self, server: str, verbose: bool, timeout: float, credentials: dict[str, Any] | None = None) -> None:
        self.server = server
        self.verbose = verbose
        self.timeout = timeout
        self.credentials = credentials or {}
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.server, timeout=self.timeout, **self.credentials)
        return self._client


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(*columns, title=title, header_style="bold")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    _console().print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvserve", prog_name="kvctl", message="%(prog)s %(version)s")
@click.option("--server", default=default_server, show_default="KVSERVE_SERVER or 127.0.0.1:8500", help="kvd address host:port")
@click.option("--timeout", default=60.0, show_default=True, help="seconds to wait for each call")
@click.option("-v", "--verbose", is_flag=True, help="show tracebacks and debug detail")
@click.option("--token", envvar="KVSERVE_TOKEN", help="bearer token (env KVSERVE_TOKEN, preferred: flags show in ps)")
@click.option("--ca", envvar="KVSERVE_CA", type=click.Path(exists=True, dir_okay=False), help="PEM CA of kvd's certificate; turns TLS on (env KVSERVE_CA)")
@click.option("--cert", envvar="KVSERVE_CERT", type=click.Path(exists=True, dir_okay=False), help="client certificate for mTLS (env KVSERVE_CERT)")
@click.option("--key", envvar="KVSERVE_KEY", type=click.Path(exists=True, dir_okay=False), help="client key for mTLS (env KVSERVE_KEY)")
@click.pass_context
def cli(ctx: click.Context, server: str, timeout: float, verbose: bool, token: str | None, ca: str | None, cert: str | None,
        key: str | None) -> None:
    """kvctl: upload Keras models to kvd and run them."""
    try:
        server = parse_address(server)
    except InvalidAddress as error:
        fail(error.message, EXIT_UNREACHABLE)
    ctx.obj = State(server, verbose, timeout, {"token": token, "ca": ca, "cert": cert, "key": key})
    _current["server"] = server


def preprocessing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--preprocess/--resize/--center-crop/--labels, shared by upload and configure."""
    for option in reversed([
        click.option("--preprocess", type=click.Choice(MODES), default=None,
                     help="how images become inputs: none (0-255), unit (/255), inception ([-1,1]), caffe (BGR - mean), torch (mean/std)"),
        click.option("--resize", type=click.Choice(RESIZE_METHODS), default="bilinear", show_default=True, help="resize method for images"),
        click.option("--center-crop", is_flag=True, help="crop images to the input's aspect ratio before resizing"),
        click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="class labels: text, one per line, or JSON (list, or Keras's imagenet_class_index.json)"),
    ]):
        command = option(command)
    return command


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="model name (default: the file name without suffix)")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default=None,
              help="auto: the fastest execution whose parity passes (kvd's default); fp16/fp32/int8: exactly that")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), help="int8: calibration inputs, a .npy batch or a folder of images")
@click.option("--hint", "performance_hint", type=click.Choice(["latency", "throughput"], case_sensitive=False), default=None,
              help="OpenVINO performance hint for this model (default: kvd's, throughput)")
@click.option("--device", "devices", default="", help="device preference, e.g. CPU,TF (default: the server's)")
@click.option("--force", is_flag=True, help="keep the model even if the parity check fails")
@click.option("--sample", "samples", type=click.Path(exists=True, path_type=Path), help="parity inputs: a .npy batch or a folder of images")
@click.option("--tolerance", type=float, default=0.0, help="parity: max relative difference allowed (default per precision)")
@preprocessing_options
@click.option("--json", "as_json", is_flag=True, help="print the stored manifest as JSON")
@click.pass_obj
def upload(state: State, path: Path, name: str | None, precision: str | None, calibration: Path | None, performance_hint: str | None,
           devices: str, force: bool, samples: Path | None, tolerance: float, preprocess: str | None, resize: str, center_crop: bool,
           labels: Path | None, as_json: bool) -> None:
    """Upload a Keras .h5/.keras file or a SavedModel (directory, .zip, .tar.gz).

    Shows each stage (receiving, converting, verifying, loading) with its own elapsed time.
    """
    with UploadView(_console(stderr=True), transient=as_json) as view:
        manifest = state.client.upload(path, name=name, precision=precision or "", force=force,
                                       devices=[d for d in devices.split(",") if d], progress=view.on_event, timeout=None,
                                       samples=samples, tolerance=tolerance, preprocess=preprocess, resize=resize,
                                       center_crop=center_crop, labels=labels, calibration=calibration,
                                       performance_hint=performance_hint or "")
    for warning in manifest.get("warnings") or []:  # on stderr, so --json output stays clean
        _console(stderr=True).print(f"[bold yellow]{warning}[/]", soft_wrap=True)
    if as_json:
        print_json(manifest)
        return
    served = manifest.get("served_by", {})
    _console().print(f"[green]ready[/] {manifest['name']} version {manifest['version']} on {served.get('backend', '?')} "
                     f"({manifest['precision']}): {served.get('reason', '')}")
    _console().print(f"parity: {_parity_line(manifest.get('parity'), manifest.get('conversion_error'))}")


@cli.command()
@click.option("--model", "-m", required=True, help="model name", shell_complete=complete_model_names)
@click.option("--version", default="", help="model version (default: latest)")
@click.option("--top", "top", default=5, show_default=True, type=click.IntRange(min=1), help="how many classes to show per input")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="images sent per request")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@click.argument("inputs", nargs=-1, required=True)
@click.pass_obj
def infer(state: State, model: str, version: str, top: int, batch_size: int, as_json: bool, inputs: tuple[str, ...]) -> None:
    """Classify images (files, folders, globs) or .npy tensors with MODEL.

    Images are decoded, resized and preprocessed as the model's manifest says; the server returns the top
    classes with their labels. A file that cannot be read is reported and the others still run (exit 3);
    a file of an unknown type is a usage error (exit 2) and nothing runs.
    """
    unknown = [name for name in inputs if Path(name).suffix.lower() not in INPUT_SUFFIXES and not Path(name).is_dir()
               and not any(ch in name for ch in "*?[")]
    if unknown:
        raise click.UsageError(f"{', '.join(unknown)}: unknown input type; give images ({', '.join(sorted(INPUT_SUFFIXES - {'.npy'}))}), "
                               ".npy tensors, folders or glob patterns")
    info = state.client.describe(model, version)
    manifest, served_version = info["manifest"], info["version"]
    if len(manifest["inputs"]) != 1:
        fail(f"model '{model}' has {len(manifest['inputs'])} inputs; kvctl infer feeds single-input models, use the Python client")
    spec = manifest["inputs"][0]
    preprocess = Preprocess.from_dict(manifest.get("preprocess"))
    files, problems = expand(inputs)
    failures: list[dict[str, str]] = [{"input": source, "error": message} for source, message in problems]
    results: list[dict[str, Any]] = []
    pending: list[NamedBatch] = []

    def flush() -> None:
        if not pending:
            return
        batch = np.concatenate([item.array for item in pending])
        rows = iter(state.client.classify(model, {spec["name"]: batch}, k=top, version=served_version))
        for item in pending:
            results.extend({"input": label, "top": [c.to_dict() for c in next(rows)]} for label in item.labels)
        pending.clear()

    for path in files:
        try:
            item = load_input(path, spec, preprocess)
        except InputError as error:
            failures.append({"input": str(path), "error": str(error)})
            continue
        if item.array.shape[0] > 1:  # a .npy batch goes on its own
            flush()
            pending.append(item)
            flush()
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
    flush()
    if as_json:
        print_json({"model": model, "version": served_version, "results": results, "failed": failures})
    elif results:
        _table(["input", "top classes"],
               [[_shown_path(r["input"]), "  ".join(f"{t['label'] or t['index']} {t['score']:.4f}" for t in r["top"])] for r in results],
               title=f"{model} v{served_version}")
    for failure in failures:
        _console(stderr=True).print(f"[bold red]error:[/] {failure['error']}", soft_wrap=True, markup=True, highlight=False)
    if failures:
        sys.exit(EXIT_PARTIAL if results else EXIT_FAILED)


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_models(state: State, as_json: bool) -> None:
    """List every model version in the repository with its state.

    An older version kvd keeps on disk but does not serve shows as ``stored`` (not a fault: a request naming
    it loads it); ``--json`` keeps the server's own state.
    """
    models = state.client.list_models()
    if as_json:
        print_json(models)
    else:
        _table(["name", "version", "state", "reason"], [[m["name"], m["version"], shown_state(m, models), m["reason"]] for m in models])


def shown_state(model: dict[str, str], models: list[dict[str, str]]) -> str:
    """READY/LOADING as they are; a non-ready version older than a READY one of the same model is just stored."""
    if model["state"] in ("READY", "LOADING") or not model["version"].isdigit():
        return model["state"]
    newer_ready = any(m["name"] == model["name"] and m["state"] == "READY" and m["version"].isdigit()
                      and int(m["version"]) > int(model["version"]) for m in models)
    failed = any(word in model["reason"].lower() for word in ("fail", "error", "damaged", "cannot", "corrupt"))
    return "stored" if newer_ready and not failed else model["state"]


@cli.command()
@click.argument("name", shell_complete=complete_model_names)
@click.option("--version", default="", help="version (default: latest)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def describe(state: State, name: str, version: str, as_json: bool) -> None:
    """Show a model's signature, device, precision and parity report."""
    info = state.client.describe(name, version)
    if as_json:
        print_json(info)
        return
    manifest = info["manifest"]
    parity = manifest.get("parity")
    rows = [
        ["version", f"{info['version']} (stored: {', '.join(info['versions'])})"],
        ["state", f"{info['state']} on {info['device'] or '-'}"],
        ["why", info["reason"]],
        ["source", f"{manifest['source']['filename']} ({manifest['source']['format']}, sha256 {manifest['source']['sha256'][:12]}…)"],
        ["precision", _precision_line(manifest)],
        ["preprocessing", _preprocess_line(manifest)],
        ["labels", _labels_line(manifest.get("labels"))],
        ["inputs", "; ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in manifest["inputs"])],
        ["outputs", "; ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in manifest["outputs"])],
        ["parity", _parity_line(parity, manifest.get("conversion_error"))],
        ["timings", ", ".join(f"{k} {v}s" for k, v in manifest.get("timings", {}).items())],
    ]
    rows += [["warning", warning] for warning in manifest.get("warnings") or []]
    _table(["", name], rows)


def _shown_path(path: str) -> str:
    """Paths relative to the working directory when that is shorter (tables are narrow)."""
    relative = os.path.relpath(path) if not path.endswith("]") else path
    return relative if len(relative) < len(path) else path


def _preprocess_line(manifest: dict[str, Any]) -> str:
    steps = manifest.get("preprocess") or {}
    crop = ", center crop" if steps.get("center_crop") else ""
    source = f" ({steps['source']})" if steps.get("source") else ""
    return f"{steps.get('mode', 'none')}, {steps.get('resize', 'bilinear')} resize{crop}{source}"


def _labels_line(labels: list[str] | None) -> str:
    if not labels:
        return "none"
    shown = ", ".join(labels[:5])
    return f"{len(labels)}: {shown}{', …' if len(labels) > 5 else ''}"


def _precision_line(manifest: dict[str, Any]) -> str:
    """Weights and execution, and the precision ladder's rungs when it climbed (auto)."""
    parity = manifest.get("parity") or {}
    line = f"{manifest.get('precision', '')} weights"
    if parity.get("execution_precision"):
        line += f", {parity['execution_precision']} execution"
    requested = manifest.get("precision_requested")
    if requested and requested != manifest.get("precision"):
        line += f" (asked: {requested})"
    compute = parity.get("reference_compute_dtype")
    if compute:
        line += f"; the Keras model itself computes in {compute} (mixed precision), so parity allows " \
                f"{parity.get('tolerance_max_rel_diff', 0):.3g}"
    climbed = [r for r in manifest.get("ladder") or [] if r.get("why_next") and not r.get("same_as")]  # same_as: not re-run
    if climbed:
        line += "; tried first: " + "; ".join(f"{r['weights']}/{r['execution']}: {r['why_next']}" for r in climbed)
    return line


def _parity_line(parity: dict[str, Any] | None, conversion_error: str | None = None) -> str:
    if not parity:
        return f"none: not converted ({conversion_error})" if conversion_error else "none"
    agreement = parity.get("top1_agreement")
    verdict = {"pass": "passed", "fail": "FAILED", "weak": "WEAK (proves nothing)"}.get(parity.get("verdict", ""),
                                                                                          "passed" if parity.get("passed") else "FAILED")
    return (f"{verdict}: max abs diff {parity['max_abs_diff']:.3g}, max rel diff "
            f"{parity['max_rel_diff']:.3g} (allowed {parity['tolerance_max_rel_diff']:.3g}), top-1 agreement "
            f"{'-' if agreement is None else f'{agreement:.1%}'} on {parity['samples']} {parity['inputs']}")


@cli.command()
@click.argument("target", metavar="NAME[:VERSION]")
@preprocessing_options
@click.option("--clear-labels", is_flag=True, help="remove the model's labels")
@click.option("--max-batch", type=int, default=None, help="dynamic batching: largest batch of gathered requests (0 = off)")
@click.option("--max-delay-ms", type=float, default=None, help="dynamic batching: longest a request waits for company, ms (default 0: batch only what is already queued)")
@click.option("--preferred-batch", "preferred", type=int, multiple=True, help="dynamic batching: a batch size to send at once (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def configure(state: State, target: str, preprocess: str | None, resize: str, center_crop: bool, labels: Path | None,
              clear_labels: bool, max_batch: int | None, max_delay_ms: float | None, preferred: tuple[int, ...], as_json: bool) -> None:
    """Change a stored model's preprocessing, labels or dynamic batching, without a new upload."""
    if preprocess is None and labels is None and not clear_labels and max_batch is None and max_delay_ms is None and not preferred:
        raise click.UsageError("nothing to change: give --preprocess, --labels, --clear-labels or --max-batch/--max-delay-ms")
    name, _, version = target.partition(":")
    info = state.client.configure(name, version, preprocess=preprocess, resize=resize, center_crop=center_crop,
                                  labels=labels, clear_labels=clear_labels, max_batch=max_batch, max_delay_ms=max_delay_ms,
                                  preferred_batch_sizes=list(preferred))
    if as_json:
        print_json(info)
        return
    manifest = info["manifest"]
    batching = manifest.get("dynamic_batching")
    _console().print(f"{name} version {info['version']}: preprocessing {_preprocess_line(manifest)}; "
                     f"{len(manifest.get('labels') or [])} labels; batching "
                     + (f"up to {batching['max_batch_size']} within {batching['max_queue_delay_ms']:g} ms" if batching else "off"))


@cli.command()
@click.argument("target", metavar="NAME[:VERSION]", shell_complete=complete_model_names)
@click.option("--yes", "-y", is_flag=True, help="delete every version of NAME without asking")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def delete(state: State, target: str, yes: bool, as_json: bool) -> None:
    """Delete one version (NAME:VERSION) or, after a confirmation, every version of a model (NAME)."""
    name, _, version = target.partition(":")
    if not version and not yes:
        stored = sorted({m["version"] for m in state.client.list_models() if m["name"] == name}, key=lambda v: (len(v), v))
        if not stored:
            fail(f"no model named '{name}' (kvctl list shows what is stored)")
        if not sys.stdin.isatty():
            raise click.UsageError(f"'{name}' has {len(stored)} version(s) ({', '.join(stored)}); "
                                   f"delete one with {name}:VERSION, or all with --yes")
        if not click.confirm(f"delete every version of '{name}' ({', '.join(stored)})?", default=False, err=True):
            fail("nothing deleted", EXIT_FAILED)
    removed = state.client.delete(name, version)
    if as_json:
        print_json({"name": name, "deleted_versions": removed})
        return
    _console().print(f"deleted {name} version{'s' if len(removed) > 1 else ''} {', '.join(removed)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Is kvd live and ready, and what does it serve?"""
    client = state.client
    info = {"server": state.server, "live": client.live(), "ready": client.ready(), **client.server_metadata(), "models": client.list_models()}
    if as_json:
        print_json(info)
        return
    ready = sum(1 for m in info["models"] if m["state"] == "READY")
    _console().print(f"{info['name']} {info['version']} at {state.server}: live={info['live']} ready={info['ready']}, "
                     f"{ready} of {len(info['models'])} model versions ready")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def devices(state: State, as_json: bool) -> None:
    """Device backends on the server: available or not, and why."""
    found = state.client.devices()
    if as_json:
        print_json(found)
    else:
        _table(["device", "available", "name / reason"], [[d["name"], "yes" if d["available"] else "no", d["full_name"] or d["reason"]] for d in found])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plugins(state: State, as_json: bool) -> None:
    """Plugins loaded by the server, with their hooks (and load errors)."""
    found = state.client.plugins()
    if as_json:
        print_json(found)
    else:
        _table(["plugin", "version", "hooks", "note"],
               [[p["name"], p["version"], ", ".join(p["hooks"]), "built-in" if p["builtin"] else (f"failed: {p['error']}" if p["error"] else "")] for p in found])


from kvserve.client.benchmark_cli import benchmark  # noqa: E402 - its own module; registered here

cli.add_command(benchmark)


lifecycle_cli.register(cli, State, print_json, _console)


def _run(entry: Callable[..., Any]) -> int:
    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    try:
        entry(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", EXIT_FAILED)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return EXIT_USAGE
    except Unreachable as error:
        if verbose:
            raise
        fail(f"cannot reach kvd at {_server_shown()}: {error.message} (start it with `kvd`, or set --server / KVSERVE_SERVER)",
             EXIT_UNREACHABLE)
    except KvserveError as error:
        if verbose:
            raise
        fail(str(error))
    except grpc.RpcError as error:  # a stub used directly; Client methods raise KvserveError
        if verbose:
            raise
        fail(f"{error.details()} [{error.code().name}]")
    except (OSError, ValueError) as error:
        if verbose:
            raise
        fail(str(error))
    return 0


_current: dict[str, str] = {}  # the --server of this run, for error lines printed after click's context is gone


def _server_shown() -> str:
    return _current.get("server") or default_server()


def main() -> int:
    return _run(cli.main)


if __name__ == "__main__":
    raise SystemExit(main())
