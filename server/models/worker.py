"""kvd's side of a model's worker child: a Runner whose model runs in another process.

For backends that declare ``isolated = True`` (TF): the model manager loads the version through a
``WorkerRunner`` instead of in-process. kvd never imports the backend's framework; the worker gets the converter
children's limits (``--child-memory-mb`` as RLIMIT_AS, a raised oom_score_adj). Calls are multiplexed by id on
one socket: ``infer_async`` awaits a future that the one reader thread resolves (``call_soon_threadsafe``), so no
thread waits per call. If the worker dies, the calls in flight fail UNAVAILABLE ("model X's TF worker exited
(signal 9); restarting"), it is restarted with back-off, and after ``MAX_DEATHS`` deaths within
``DEATH_WINDOW_S`` it stays down: the model is not ready, with that reason, until it is loaded again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kvserve.plugins.types import LoadRequest
from kvserve.server.errors import FailedPrecondition, InvalidArgument, KvError, ResourceExhausted, Unavailable
from kvserve.server.models.worker_child import THREADS
from kvserve.server.models.worker_wire import Channel, Closed
from kvserve.server.uploads.child import LOG_PREFIX, child_env, kill_child, tail_log

log = logging.getLogger("kvserve.server.models.worker")

LOAD_TIMEOUT_S = 900.0  # importing TensorFlow and loading a large SavedModel
MAX_DEATHS = 3  # deaths within DEATH_WINDOW_S after which the worker is not restarted again
DEATH_WINDOW_S = 300.0
BACKOFF_S = (0.5, 2.0, 5.0)  # wait before restart after the 1st, 2nd, 3rd death in the window
SEND_OFF_LOOP_BYTES = 256 * 1024  # larger requests are written from a thread, never blocking the event loop

READY, RESTARTING, FAILED, CLOSED = "ready", "restarting", "failed", "closed"

Listener = Callable[[str, str], None]


class WorkerCallFailed(RuntimeError):
    """An unexpected failure inside the worker (its traceback is in the worker's log): INTERNAL, generic message."""


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    channel: Channel
    log_path: Path
    tmp: Path


class WorkerRunner:
    """A Runner (``infer``, ``infer_async``, ``close``) for one model version served by ``backend`` in a child."""

    nireq = THREADS  # the admission queue's slots for this model: the worker's thread pool

    def __init__(self, backend: str, request: LoadRequest, memory_bytes: int = 0, label: str = "") -> None:
        self.backend = backend
        self.model = str(request.manifest.get("name", "") or request.model_dir.name)
        self.memory_bytes = memory_bytes
        self.label = label
        self.execution_precision = ""
        self.confined = ""  # how the worker's filesystem access is confined (Landlock), or why it is not
        self._request = request
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Callable[[Any, BaseException | None], None]] = {}
        self._deaths: deque[float] = deque()
        self._listeners: list[Listener] = []
        self._state, self._why = CLOSED, ""
        self._worker = self._start()  # raises: the load failed (the model is not served by this backend)
        self._state = READY
        self._begin(self._worker)

    # --- the Runner interface -----------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._worker.process.pid

    @property
    def state(self) -> str:
        return self._state

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        done: Future[dict[str, np.ndarray]] = Future()

        def settle(result: Any, error: BaseException | None) -> None:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        channel, number = self._register(settle)
        self._send(channel, number, inputs, outputs)
        return done.result()

    async def infer_async(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_resolve, done, result, error)
            except RuntimeError:  # the loop has closed (kvd stopping): nobody awaits the answer
                pass

        channel, number = self._register(settle)
        if sum(_nbytes(a) for a in inputs.values()) > SEND_OFF_LOOP_BYTES:
            await asyncio.to_thread(self._send, channel, number, inputs, outputs)
        else:
            self._send(channel, number, inputs, outputs)
        return await done

    def close(self) -> None:
        with self._lock:
            if self._state == CLOSED:
                return
            self._state, self._why = CLOSED, f"model {self.model} was unloaded"
            worker, pending = self._worker, self._take_pending()
        for settle in pending:
            settle(None, Unavailable(f"model '{self.model}' was unloaded while the call ran; retry"))
        worker.channel.close()  # the worker reads end of stream and exits
        threading.Thread(target=_reap, args=(worker,), name="kvd-worker-reap", daemon=True).start()

    # --- state for the model manager ---------------------------------------------------------------
    def watch(self, listener: Listener) -> None:
        """``listener(state, reason)`` on each change: ``restarting`` (calls fail UNAVAILABLE meanwhile), ``ready``
        again, or ``failed`` (kept dying: not restarted; load the model again to retry)."""
        self._listeners.append(listener)

    def relocate(self, model_dir: Path, cache_dir: Path) -> None:
        """The version's files moved (staging published as ``<name>/<version>``): restarts load from there."""
        self._request = replace(self._request, model_dir=model_dir, cache_dir=cache_dir)

    # --- calls --------------------------------------------------------------------------------------
    def _register(self, settle: Callable[[Any, BaseException | None], None]) -> tuple[Channel, int]:
        with self._lock:
            if self._state != READY:
                raise Unavailable(self._why)
            number = next(self._ids)
            self._pending[number] = settle
            return self._worker.channel, number

    def _send(self, channel: Channel, number: int, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> None:
        try:
            channel.send({"op": "infer", "id": number, "outputs": list(outputs or [])}, inputs)
        except Closed:
            pass  # the worker died: the reader thread fails this call with the reason

    def _take_pending(self) -> list[Callable[[Any, BaseException | None], None]]:
        pending = list(self._pending.values())
        self._pending.clear()
        return pending

    def _read(self, worker: _Worker) -> None:
        """The one reader thread of a worker: route each answer to its caller; on end of stream, the death."""
        while True:
            try:
                header, arrays = worker.channel.receive()
            except Closed:
                break
            except Exception:  # noqa: BLE001 - a garbled frame: treat the worker as broken
                log.exception("model %s: unreadable answer from its %s worker", self.model, self.backend)
                kill_child(worker.process)
                break
            with self._lock:
                settle = self._pending.pop(header.get("id"), None)
            if settle is None:
                continue
            if header.get("ok"):
                settle(arrays, None)
            else:
                settle(None, self._error(header))
        self._died(worker)

    def _error(self, header: dict[str, Any]) -> BaseException:
        kind, message = header.get("kind"), str(header.get("message", ""))
        if kind == "resource_exhausted":
            limit = f" (kvd --child-memory-mb {self.memory_bytes >> 20})" if self.memory_bytes else ""
            return ResourceExhausted(f"model '{self.model}''s {self.backend} worker ran out of memory on this call{limit}; "
                                     "send fewer rows per request")
        if kind == "invalid_argument":
            return InvalidArgument(f"model '{self.model}': {message}")
        if kind == "failed_precondition":
            return FailedPrecondition(message)
        return WorkerCallFailed(f"model {self.model}'s {self.backend} worker failed: {message}")

    # --- life and death -----------------------------------------------------------------------------
    def _start(self) -> _Worker:
        """Spawn a worker and have it load the model; raises what the load raised (the caller starts its reader)."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd, name = tempfile.mkstemp(prefix=f"{LOG_PREFIX}worker-{os.getpid()}-", suffix=".log")
        private_tmp = Path(tempfile.mkdtemp(prefix=f"{LOG_PREFIX}worker-{os.getpid()}-", suffix=".tmp"))
        try:
            with os.fdopen(fd, "wb") as stderr:
                command = [sys.executable, "-m", "kvserve.server.models.worker_child", "--fd", str(child_end.fileno()),
                           "--model", self.model, "--tmp", str(private_tmp), *(["--for", self.label] if self.label else [])]
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                           pass_fds=(child_end.fileno(),), env=child_env(self.memory_bytes),
                                           start_new_session=True)
        finally:
            child_end.close()
        worker = _Worker(process, Channel(parent_end), Path(name), private_tmp)
        try:
            parent_end.settimeout(LOAD_TIMEOUT_S)
            worker.channel.send({"op": "load", "id": 0, "backend": self.backend, "request": _request_dict(self._request)})
            header, _ = worker.channel.receive()
            parent_end.settimeout(None)
        except (Closed, OSError) as error:
            kill_child(process)
            code = process.wait()
            tail = tail_log(worker.log_path)
            _discard(worker)
            log.error("model %s: its %s worker died while loading (%s); last output:\n%s", self.model, self.backend,
                      _cause(code), tail)
            if isinstance(error, socket.timeout):
                raise RuntimeError(f"the {self.backend} worker took longer than {LOAD_TIMEOUT_S:.0f} s to load the model") from None
            raise RuntimeError(f"the {self.backend} worker exited ({_cause(code)}) while loading the model"
                               f"{_memory_hint(self.memory_bytes)}") from None
        if not header.get("ok"):
            worker.channel.close()
            threading.Thread(target=_reap, args=(worker,), name="kvd-worker-reap", daemon=True).start()
            error = self._error(header)
            raise error if isinstance(error, KvError) else RuntimeError(str(header.get("message", "")))
        info = header.get("info") or {}
        self.execution_precision = str(info.get("execution_precision", ""))
        self.confined = str(info.get("confined", ""))
        log.info("model %s: %s worker started (pid %d; %s)", self.model, self.backend, process.pid, self.confined)
        return worker

    def _begin(self, worker: _Worker) -> None:
        """Start the worker's reader (once it is the current worker: a death is then always noticed)."""
        threading.Thread(target=self._read, args=(worker,), name=f"kvd-worker-{self.model}", daemon=True).start()

    def _died(self, worker: _Worker) -> None:
        with self._lock:
            if self._state == CLOSED or worker is not self._worker:
                _discard_later(worker)
                return
        try:
            code = worker.process.wait(5)
        except subprocess.TimeoutExpired:  # it closed the pipe but lives on: it is no use now
            kill_child(worker.process)
            code = worker.process.wait()
        tail = tail_log(worker.log_path)
        _discard(worker)
        now = time.monotonic()
        with self._lock:
            if self._state == CLOSED:
                return
            while self._deaths and now - self._deaths[0] > DEATH_WINDOW_S:
                self._deaths.popleft()
            self._deaths.append(now)
            deaths = len(self._deaths)
            cause = _cause(code)
            if deaths > MAX_DEATHS:
                self._state, self._why = FAILED, self._given_up(cause, deaths)
            else:
                self._state = RESTARTING
                self._why = f"model {self.model}'s {self.backend} worker exited ({cause}); restarting"
            state, why, pending = self._state, self._why, self._take_pending()
        log.error("%s; last output:\n%s", why, tail)
        for settle in pending:
            settle(None, Unavailable(why))
        self._tell(state, why)
        if state == RESTARTING:
            threading.Thread(target=self._restart, args=(deaths, cause), name=f"kvd-worker-restart-{self.model}",
                             daemon=True).start()

    def _restart(self, deaths: int, cause: str) -> None:
        time.sleep(BACKOFF_S[min(deaths, len(BACKOFF_S)) - 1])
        with self._lock:
            if self._state != RESTARTING:
                return
        try:
            worker = self._start()
        except Exception as error:  # noqa: BLE001 - a failed restart counts as another death
            log.error("model %s: restarting its %s worker failed: %s", self.model, self.backend, error)
            with self._lock:
                if self._state != RESTARTING:
                    return
                self._deaths.append(time.monotonic())
                if len(self._deaths) > MAX_DEATHS:
                    self._state = FAILED
                    self._why = self._given_up(cause, len(self._deaths), str(error).splitlines()[0] if str(error) else type(error).__name__)
                state, why = self._state, self._why
            if state == FAILED:
                self._tell(FAILED, why)
            else:
                self._restart(len(self._deaths), cause)
            return
        with self._lock:
            if self._state != RESTARTING:  # closed meanwhile
                stale = worker
            else:
                stale, self._worker, self._state = None, worker, READY
                self._why = f"its {self.backend} worker was restarted after it exited ({cause})"
        if stale is not None:
            stale.channel.close()
            _reap(stale)
            return
        self._begin(worker)
        log.info("model %s: %s", self.model, self._why)
        self._tell(READY, self._why)

    def _given_up(self, cause: str, deaths: int, last: str = "") -> str:
        return (f"model {self.model}'s {self.backend} worker exited ({cause}) {deaths} times in {DEATH_WINDOW_S:.0f} s"
                f"{_memory_hint(self.memory_bytes)}{f' (last restart: {last})' if last else ''}; not restarted again: "
                f"load the model again (kvctl load {self.model}) once its cause is fixed")

    def _tell(self, state: str, why: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(state, why)
            except Exception:  # noqa: BLE001 - an observer never stops a restart
                log.exception("worker state listener failed for %s", self.model)


def _resolve(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():
        return  # the caller went away
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


def _nbytes(array: np.ndarray) -> int:
    return int(array.nbytes) if getattr(array, "dtype", None) is not None and array.dtype != object else 0


def _request_dict(request: LoadRequest) -> dict[str, Any]:
    return {"model_dir": str(request.model_dir), "manifest": dict(request.manifest),
            "inputs": [s.to_dict() for s in request.inputs], "outputs": [s.to_dict() for s in request.outputs],
            "cache_dir": str(request.cache_dir), "config": dict(request.config),
            "allow_unsafe_deserialization": request.allow_unsafe_deserialization}


def _cause(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _memory_hint(memory_bytes: int) -> str:
    return f" (its memory limit is {memory_bytes >> 20} MiB, kvd --child-memory-mb)" if memory_bytes else ""


def _reap(worker: _Worker, grace_s: float = 5.0) -> None:
    """After close: the worker exits on end of stream; kill it if it does not, then drop its log."""
    try:
        worker.process.wait(grace_s)
    except subprocess.TimeoutExpired:
        kill_child(worker.process)
        worker.process.wait()
    _discard(worker)


def _discard_later(worker: _Worker) -> None:
    threading.Thread(target=_reap, args=(worker,), name="kvd-worker-reap", daemon=True).start()


def _discard(worker: _Worker) -> None:
    worker.channel.close()
    worker.log_path.unlink(missing_ok=True)
    shutil.rmtree(worker.tmp, ignore_errors=True)
