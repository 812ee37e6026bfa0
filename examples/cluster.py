"""Replicas on one machine, for real: one writer and N read-only kvd processes on one repository (loopback).

Used by ``make cluster-demo`` (examples/cluster_demo.py) and tests/test_replicas.py. Nothing here is a
balancer: the client is a gRPC channel with the round_robin policy and a retry policy for UNAVAILABLE
(kvserve.client.balancing), the readers find new versions by polling the shared repository (--poll-seconds).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from kvserve.client import Client
from kvserve.client.balancing import channel_options, replicas_target


# With the HTTP front door, kvd binds 127.0.0.1:8501 unless told otherwise: replicas on one machine would clash.
HTTP_OFF = ("--http-address", "") if importlib.util.find_spec("kvserve.server.api.rest") else ()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Replica:
    """One kvd process on a fixed loopback port (so a restarted replica comes back where clients look)."""

    repository: Path
    log_path: Path
    port: int
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Replica":
        command = [sys.executable, "-m", "kvserve.server.main", "--repository", str(self.repository), "--address", self.address,
                   "--metrics-address", "", *HTTP_OFF, *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=2) as client:
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"kvd on {self.address} exited:\n{self.log_path.read_text(errors='replace')[-3000:]}")
                try:
                    if client.ready():
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kvd on {self.address} not ready after {timeout:.0f} s")
                time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    writer: Replica
    readers: list[Replica]

    @classmethod
    def start(cls, workdir: Path, readers: int = 2, poll_seconds: float = 1.0) -> "Cluster":
        repository = workdir / "repository"
        repository.mkdir(parents=True, exist_ok=True)
        writer = Replica(repository, workdir / "writer.log", free_port(), ("--poll-seconds", str(poll_seconds))).start()
        writer.wait_ready()  # the writer prepares the repository before readers share it
        replicas = [Replica(repository, workdir / f"reader{i}.log", free_port(),
                            ("--read-only", "--poll-seconds", str(poll_seconds), "--cache-dir", str(workdir / f"cache{i}"))).start()
                    for i in range(readers)]
        for replica in replicas:
            replica.wait_ready()
        return cls(writer, replicas)

    def stop(self) -> None:
        for replica in [*self.readers, self.writer]:
            replica.stop()

    def balanced_client(self, timeout: float = 30.0) -> Client:
        """A client spreading calls over the readers (round_robin) and retrying UNAVAILABLE on another one."""
        return Client(replicas_target([r.address for r in self.readers]), timeout=timeout, channel_options=channel_options())


def wait_until(check, timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``check()`` held; TimeoutError after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not converged after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - started


def model_state(replica: Replica, name: str) -> set[str]:
    """Versions of ``name`` READY on one replica."""
    with Client(replica.address, timeout=5) as client:
        try:
            return {m["version"] for m in client.list_models() if m["name"] == name and m["state"] == "READY"}
        except Exception:  # noqa: BLE001 - a replica restarting counts as not converged
            return set()


def _describe(error: Exception) -> str:
    details = error.details() if isinstance(error, grpc.RpcError) else str(error)
    return f"{type(error).__name__}: {details}"


def gone(replica: Replica, name: str, inputs: np.ndarray) -> bool:
    """Whether ``name`` is no longer served by the replica (an infer answers NOT_FOUND)."""
    with Client(replica.address, timeout=5) as client:
        try:
            client.infer(name, inputs)
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False


@dataclass
class Traffic:
    """Callers sending the same input through one balanced channel until stopped; every answer is compared."""

    cluster: Cluster
    model: str
    inputs: np.ndarray
    callers: int = 4
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    different: int = 0
    reference: np.ndarray | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Traffic":
        with self.cluster.balanced_client() as client:
            self.reference = next(iter(client.infer(self.model, self.inputs).values()))
        for index in range(self.callers):
            thread = threading.Thread(target=self._call, name=f"caller-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _call(self) -> None:
        with self.cluster.balanced_client() as client:
            while not self._stop.is_set():
                try:
                    answer = next(iter(client.infer(self.model, self.inputs).values()))
                    same = bool(np.array_equal(answer, self.reference))
                    with self._lock:
                        self.sent += 1
                        self.different += not same
                except Exception as error:  # noqa: BLE001 - what the caller would see
                    with self._lock:
                        self.sent += 1
                        self.failures.append(_describe(error))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
