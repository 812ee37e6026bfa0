"""Runs one job in a child Python process and relays its progress; both sides of that protocol live here.

Work that needs TensorFlow (conversion, benchmarks) runs in a child, so the daemon never imports it and a
crash, hang or OOM there fails that one job, never the daemon. Protocol: one JSON object per line on the
child's original stdout (library prints go to stderr, which is the job's log file): progress events while it
works, then ``{"ok": true, "result": {...}}`` or ``{"ok": false, "kind": ..., "message": ...}``.
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
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from kvserve.server.ops import disk
from kvserve.server.errors import FailedPrecondition, Internal, InvalidArgument, KvError, NotFound, ResourceExhausted
from kvserve.server.ops.limits import Abandon

log = logging.getLogger("kvserve.server.uploads.child")

WATCH_INTERVAL_S = 0.1  # how soon a timeout or a cancelled call stops the child

KINDS: dict[str, type[KvError]] = {
    "invalid_argument": InvalidArgument,
    "not_found": NotFound,
    "failed_precondition": FailedPrecondition,
    "resource_exhausted": ResourceExhausted,
    "internal": Internal,
}


@dataclass(frozen=True)
class ChildJob:
    """What to run, and how to word its failures: ``noun`` names the job, ``worker`` the process, ``lost`` what
    a crash costs the user, ``timeout_hint`` what to do about a timeout."""

    module: str
    noun: str
    worker: str
    lost: str
    timeout_hint: str
    log_name: str


MEMORY_ENV = "KVSERVE_CHILD_MEMORY_BYTES"
OOM_SCORE_ADJ = 500  # the kernel's OOM killer picks a child (one job lost) before kvd (every model down)


def child_env(memory_bytes: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    if memory_bytes > 0:
        env[MEMORY_ENV] = str(memory_bytes)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log_path: Path


class Launcher:
    """Starts the child processes of one kind. Each child runs exactly one job and exits (a crash costs one job).

    With ``warm``, the next child is started ahead of time and does its imports (TensorFlow, Keras, OpenVINO)
    while it waits for its job on stdin, so a job does not wait the ~5 s those imports take.
    """

    def __init__(self, kind: ChildJob, warm: bool = False, label: str = "", memory_bytes: int = 0) -> None:
        self.kind = kind
        self.memory_bytes = memory_bytes  # the child's address-space limit (--child-memory-mb); 0: none
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
            threading.Thread(target=self._refill, name=f"kvd-{self.kind.noun}-warmup", daemon=True).start()
        return child

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._idle = self._idle, None
        if child is not None:
            kill_child(child.process)
            child.process.wait()
            child.log_path.unlink(missing_ok=True)

    def _refill(self) -> None:
        with self._lock:
            if self._closed or self._idle is not None:
                return
            self._idle = self._spawn()

    def _spawn(self) -> Child:
        # the log moves into the job's directory once the child has a job
        fd, name = tempfile.mkstemp(prefix=f"{LOG_PREFIX}{self.kind.noun}-{os.getpid()}-", suffix=".log")
        with os.fdopen(fd, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", self.kind.module, *(["--for", self.label] if self.label else [])],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.PIPE,
                env=child_env(self.memory_bytes),
                start_new_session=True,
            )
        return Child(process, Path(name))


LOG_PREFIX = "kvserve-"


def remove_orphan_logs() -> list[str]:
    """Child logs (in the temp dir until a job claims them) and model workers' private temp directories left by a
    kvd that was killed: its pid is gone."""
    removed = []
    folder = Path(tempfile.gettempdir())
    for path in [*folder.glob(f"{LOG_PREFIX}*-*-*.log"), *folder.glob(f"{LOG_PREFIX}worker-*-*.tmp")]:
        pid_text = path.name.rsplit(".", 1)[0].split("-")[2]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if path.is_dir():  # a model worker's private temp directory
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_child(launcher: Launcher, job: dict[str, Any], workdir: Path, timeout_s: float,
              cancelled: threading.Event | None = None, abandon: Abandon | None = None) -> Iterator[dict[str, Any]]:
    """Yield the child's progress events; the last item yielded is its result (key ``result``).

    The child (its whole process group) is killed on timeout, when ``cancelled`` is set (e.g. by the gRPC call's
    termination callback: a child may say nothing for minutes, so waiting for the next yield is not enough),
    when ``abandon`` is set (its error is raised here), and when the caller stops iterating early. A cancelled
    run ends quietly, without a result.
    """
    kind = launcher.kind
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job))
    taken = launcher.take()
    child = taken.process
    log_path = workdir / kind.log_name
    try:
        assert child.stdin is not None
        child.stdin.write(f"{job_path}\n".encode())
        child.stdin.close()
    except BrokenPipeError:
        pass  # it died while waiting; reported below like any early death
    timed_out = threading.Event()
    finished = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not finished.wait(WATCH_INTERVAL_S):
            if cancelled is not None and cancelled.is_set():
                break
            if time.monotonic() > deadline:
                timed_out.set()
                break
        else:
            return
        kill_child(child)

    threading.Thread(target=watch, name=f"kvd-{kind.noun}-watch", daemon=True).start()
    forget = abandon.on_set(lambda: kill_child(child)) if abandon is not None else (lambda: None)
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
        finished.set()
        forget()
        if child.poll() is None:  # the caller went away (client cancelled): do not leave the child running
            kill_child(child)
            child.wait()
        shutil.move(taken.log_path, log_path)
    if abandon is not None:
        abandon.check()
    if cancelled is not None and cancelled.is_set() and final is None:
        log.info("%s cancelled by the client; its process was stopped", kind.noun)
        return
    if timed_out.is_set():
        raise ResourceExhausted(f"{kind.noun} took longer than {timeout_s:.0f} s and was stopped; {kind.timeout_hint}")
    if final is None:
        tail = tail_log(log_path)
        log.error("%s exited with %s; last output:\n%s", kind.worker, returncode, tail)
        cause = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        raise Internal(f"the {kind.worker} died ({cause}) before finishing; {kind.lost} and kvd keeps serving")
    if not final["ok"]:
        if final["kind"] == "internal":
            log.error("%s failed: %s\n%s", kind.worker, final["message"], tail_log(log_path))
        raise KINDS.get(final["kind"], Internal)(final["message"])
    yield {"result": final["result"]}


def kill_child(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail_log(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the child's side -------------------------------------------------------------------------------------
def emit(channel: TextIO, payload: dict[str, Any]) -> None:
    """Send one protocol message to the parent."""
    channel.write(json.dumps(payload) + "\n")
    channel.flush()


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """Once kvd is gone (even by kill -9) we are reparented: stop, instead of writing into a directory it removes."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(70)


def limit_self() -> None:
    """In a child, first thing: raise our OOM score (we die before kvd) and cap our address space when kvd was
    given --child-memory-mb (RLIMIT_AS: an allocation past it fails as MemoryError, reported as
    RESOURCE_EXHAUSTED, instead of the machine swapping or the OOM killer choosing)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass  # not Linux, or not allowed: the memory limit below still holds
    limit = int(os.environ.get(MEMORY_ENV, "0") or 0)
    if limit > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child_main(run: Callable[[dict[str, Any], TextIO], dict[str, Any]],
               errors: Sequence[tuple[type[BaseException], str]], worker: str,
               preload: Callable[[], None] | None = None) -> int:
    """The body of a child's ``main``: do the imports (``preload``), read the job's path on stdin, run it, and
    report the result or a classified error.

    ``errors`` maps exception types (checked in order) to protocol kinds; anything else is ``internal``, with
    its traceback in the job's log.
    """
    limit_self()
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the protocol
    if preload is not None:
        preload()
    job_path = sys.stdin.readline().strip()
    if not job_path:  # kvd closed our stdin without a job: it is shutting down
        return 0
    job = json.loads(Path(job_path).read_text())
    try:
        emit(channel, {"ok": True, "result": run(job, channel)})
    except MemoryError:
        emit(channel, {"ok": False, "kind": "resource_exhausted", "message": f"the {worker} ran out of memory"})
    except Exception as error:  # noqa: BLE001 - reported to the parent, traceback to stderr (the job's log)
        kind = next((k for t, k in errors if isinstance(error, t)), None)
        if disk.is_disk_full(error):
            emit(channel, {"ok": False, "kind": "resource_exhausted", "message": str(disk.disk_full(Path(job.get("out_dir") or job_path).parent))})
        elif kind is not None:
            emit(channel, {"ok": False, "kind": kind, "message": str(error)})
        else:
            traceback.print_exc()
            emit(channel, {"ok": False, "kind": "internal", "message": f"{worker} failed: {type(error).__name__}: {error}"})
    return 0
