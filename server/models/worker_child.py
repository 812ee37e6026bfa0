"""A model's worker child: ``python -m kvserve.server.models.worker_child --fd N``, serving one model version.

A backend that runs untrusted model code (TensorFlow: a SavedModel graph may read and write files, a Keras model
may crash or eat memory) declares ``isolated = True``; kvd then runs its runner here, so TensorFlow is imported
only in this process and a crash, an OOM or a file op costs this model, never the daemon or other models.

Protocol (``kvserve.server.models.worker_wire`` frames on the socket kvd passed as ``--fd``): the first frame is
``{"op": "load", "backend": ..., "request": {...}}``, answered ``{"id": 0, "ok": true}`` or an error; then
``{"op": "infer", "id": n, "outputs": [...]}`` with the input arrays, each answered by id (concurrent calls run
on a small thread pool, answers in any order) with the output arrays or ``{"ok": false, "kind", "message"}``.
End of stream (kvd closed the model, or died) ends the process. Resource limits come first (``limit_self``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from kvserve.server.models.worker_wire import Channel, Closed, TooBig

THREADS = 4  # calls run at once (kvd's admission queue gives the runner this many slots)
CONFINE_ENV = "KVSERVE_WORKER_LANDLOCK"  # "off": no filesystem confinement (a model that needs more of the disk)

log = logging.getLogger("kvserve.worker")


def build_runner(message: dict[str, Any]) -> Any:
    """The backend's own runner, by backend name, through the plugin manager (third-party backends too)."""
    from kvserve.plugins.manager import load_plugins
    from kvserve.plugins.types import LoadRequest, TensorSpec

    wanted = message["backend"]
    backend = next((b for b in load_plugins().backends() if b.name == wanted), None)
    if backend is None:
        raise RuntimeError(f"no backend plugin named {wanted} in the worker")
    spec = message["request"]
    request = LoadRequest(Path(spec["model_dir"]), spec["manifest"], [TensorSpec.from_dict(t) for t in spec["inputs"]],
                          [TensorSpec.from_dict(t) for t in spec["outputs"]], Path(spec["cache_dir"]), dict(spec.get("config") or {}),
                          bool(spec.get("allow_unsafe_deserialization")))
    return backend.load(request)


def classify(error: BaseException) -> tuple[str, str]:
    """(protocol kind, one-line message) of a failure; kvd maps the kind to its status code."""
    from kvserve.plugins.types import ModelRejected, UnsafeModel

    text = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError":
        return "resource_exhausted", "out of memory"
    if isinstance(error, UnsafeModel):
        return "failed_precondition", text
    if isinstance(error, ModelRejected):
        return "invalid_argument", text
    traceback.print_exc()
    return "internal", f"{type(error).__name__}: {text}"


def confine_to(model_dir: Path, private_tmp: str) -> str:
    """Landlock the process before the framework is imported (kvserve.server.models.confine); where the kernel
    cannot, say why and go on: the process boundary and the memory limit still hold."""
    if private_tmp:
        os.environ["TMPDIR"] = private_tmp
        tempfile.tempdir = None
    if os.environ.get(CONFINE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return f"filesystem not confined ({CONFINE_ENV}=off)"
    if not private_tmp:
        return "filesystem not confined (no private temp directory)"
    from kvserve.server.models.confine import confine

    try:
        return "filesystem confined: " + confine(model_dir, Path(private_tmp))
    except OSError as error:
        return f"filesystem not confined: {error.strerror or error}"


def serve(channel: Channel, private_tmp: str = "") -> int:
    header, _ = channel.receive()
    if header.get("op") != "load":
        return 2
    confined = confine_to(Path(header["request"]["model_dir"]), private_tmp)
    log.info("%s", confined)
    try:
        runner = build_runner(header)
    except BaseException as error:  # noqa: BLE001 - every load failure is answered, then we exit
        kind, message = classify(error)
        channel.send({"id": 0, "ok": False, "kind": kind, "message": message})
        return 0
    info = {"execution_precision": str(getattr(runner, "execution_precision", "") or ""), "confined": confined}
    channel.send({"id": 0, "ok": True, "info": info, "pid": os.getpid()})
    pool = ThreadPoolExecutor(THREADS, thread_name_prefix="infer")

    def answer(call: dict[str, Any], inputs: dict[str, np.ndarray]) -> None:
        try:
            outputs = runner.infer(inputs, call.get("outputs") or None)
        except BaseException as error:  # noqa: BLE001 - answered to kvd; this call only
            kind, message = classify(error)
            _reply(channel, {"id": call["id"], "ok": False, "kind": kind, "message": message})
            return
        try:
            channel.send({"id": call["id"], "ok": True}, outputs)
        except MemoryError:
            _reply(channel, {"id": call["id"], "ok": False, "kind": "resource_exhausted", "message": "out of memory"})
        except Closed:
            os._exit(0)  # kvd is gone

    while True:
        try:
            call, inputs = channel.receive()
        except TooBig as big:
            _reply(channel, {"id": big.header.get("id"), "ok": False, "kind": "resource_exhausted", "message": "out of memory"})
            continue
        except Closed:
            return 0
        if call.get("op") == "infer":
            pool.submit(answer, call, inputs)


def _reply(channel: Channel, header: dict[str, Any]) -> None:
    try:
        channel.send(header)
    except Closed:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kvd's worker for one model version (started by kvd)")
    parser.add_argument("--fd", type=int, required=True, help="the socket kvd passed")
    parser.add_argument("--model", default="", help="the model served (shown by ps)")
    parser.add_argument("--tmp", default="", help="the worker's private temp directory (the only place it may write)")
    parser.add_argument("--for", dest="label", default="", help="the repository of the kvd that started it (shown by ps)")
    args = parser.parse_args(argv)
    from kvserve.server.uploads.child import _exit_with_parent, limit_self

    limit_self()
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    os.dup2(2, 1)  # anything a library prints goes to the worker's log
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        code = serve(channel, args.tmp)
    except Closed:
        code = 0
    sys.stderr.flush()
    os._exit(code)  # skip TensorFlow's slow teardown; nothing here needs flushing but the log


if __name__ == "__main__":
    raise SystemExit(main())
