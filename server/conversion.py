"""Runs one conversion in a child process and relays its progress; the daemon never imports TensorFlow here.

A child that crashes, hangs past the time limit, or answers nonsense fails that upload with a clear status;
its stderr goes to ``convert.log`` in the staging directory and a tail of it to the daemon log. The child
exits by itself when kvd dies (it watches its parent), and an upload that is abandoned kills it at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kvserve.server.errors import FailedPrecondition, Internal, InvalidArgument, KvError, ResourceExhausted
from kvserve.server.limits import Abandon

log = logging.getLogger("kvserve.server.conversion")

KINDS: dict[str, type[KvError]] = {
    "invalid_argument": InvalidArgument,
    "failed_precondition": FailedPrecondition,
    "resource_exhausted": ResourceExhausted,
    "internal": Internal,
}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log_path: Path


class ConverterLauncher:
    """Starts converter children. Each child converts exactly one model and exits (a crash costs one upload).

    With ``warm``, the next child is started ahead of time and imports TensorFlow, Keras and OpenVINO while it
    waits for its job, so an upload does not wait the ~5 s those imports take.
    """

    def __init__(self, warm: bool = True, label: str = "") -> None:
        self.warm = warm
        self.label = label  # shown on the child's command line (ps): which kvd's repository it works for
        self._idle: Child | None = None
        self._lock = threading.Lock()
        self._closed = False
        if warm:
            self._refill()

    def take(self) -> Child:
        with self._lock:
            child, self._idle = self._idle, None
        if child is None or child.process.poll() is not None:
            child = self._spawn()
        if self.warm:
            threading.Thread(target=self._refill, name="kvd-converter-warmup", daemon=True).start()
        return child

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._idle = self._idle, None
        if child is not None:
            _kill(child.process)
            child.process.wait()
            child.log_path.unlink(missing_ok=True)

    def _refill(self) -> None:
        with self._lock:
            if self._closed or self._idle is not None:
                return
            self._idle = self._spawn()

    def _spawn(self) -> Child:
        # the log moves into the upload's staging directory once the child has a job
        fd, name = tempfile.mkstemp(prefix="kvserve-converter-", suffix=".log")
        with os.fdopen(fd, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "kvserve.server.convert_child", *(["--for", self.label] if self.label else [])],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.PIPE,
                env=_child_env(),
                start_new_session=True,
            )
        return Child(process, Path(name))


def run_conversion(job: dict[str, Any], workdir: Path, timeout_s: float, launcher: ConverterLauncher,
                   abandon: Abandon | None = None) -> Iterator[dict[str, Any]]:
    """Yield the child's stage events; the last item yielded is its result dict (key ``result``).

    Setting ``abandon`` kills the child at once and raises its error here.
    """
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job))
    taken = launcher.take()
    child = taken.process
    log_path = workdir / "convert.log"
    try:
        assert child.stdin is not None
        child.stdin.write(f"{job_path}\n".encode())
        child.stdin.close()
    except BrokenPipeError:
        pass  # it died while waiting; reported below like any early death
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill(child)

    timer = threading.Timer(timeout_s, on_timeout)
    timer.daemon = True
    timer.start()
    forget = abandon.on_set(lambda: _kill(child)) if abandon is not None else (lambda: None)
    final: dict[str, Any] | None = None
    try:
        assert child.stdout is not None
        for line in child.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "ok" in message:
                final = message
            else:
                yield message
        returncode = child.wait()
    finally:
        timer.cancel()
        forget()
        if child.poll() is None:  # the caller went away (client cancelled): do not leave the child running
            _kill(child)
            child.wait()
        shutil.move(taken.log_path, log_path)
    if abandon is not None:
        abandon.check()
    if timed_out.is_set():
        raise ResourceExhausted(f"conversion took longer than {timeout_s:.0f} s and was stopped; raise kvd --conversion-timeout for very large models")
    if final is None:
        tail = _tail(log_path)
        log.error("converter child exited with %s; last output:\n%s", returncode, tail)
        cause = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        raise Internal(f"the converter process died ({cause}) before finishing; the upload was discarded and kvd keeps serving")
    if not final["ok"]:
        if final["kind"] == "internal":
            log.error("converter failed: %s\n%s", final["message"], _tail(log_path))
        raise KINDS.get(final["kind"], Internal)(final["message"])
    yield {"result": final["result"]}


def _kill(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
