"""Shared fixtures: a real kvd on 127.0.0.1 and a free port, and models trained or built offline.

Heavy artefacts (the trained digits model in three formats, an InceptionV3 .h5) are made once per session.
Every kvd a test starts is stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from opsutil import ADMIN_TOKEN, READ_TOKEN, copy_model, make_certs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ov-precision", choices=("auto", "f32", "bf16", "f16"), default=None,
                     help="force OpenVINO's execution precision for the whole suite, kvd processes included (sets "
                          "KVSERVE_INFERENCE_PRECISION): f32 runs it as an AVX2-only CPU would, bf16 as one with "
                          "avx512_bf16 or AMX (where this CPU supports it)")


def pytest_configure(config: pytest.Config) -> None:
    forced = config.getoption("--ov-precision")
    if forced:
        os.environ["KVSERVE_INFERENCE_PRECISION"] = forced  # inherited by every kvd and child process


def pytest_report_header(config: pytest.Config) -> str:
    return f"OpenVINO execution precision: {os.environ.get('KVSERVE_INFERENCE_PRECISION') or 'auto (the device default)'}"


@dataclass
class Kvd:
    """A kvd child process started for a test."""

    repository: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    port: int
    args: list[str] = field(default_factory=list)
    client_options: dict = field(default_factory=dict)  # token / ca / cert / key for a protected kvd
    metrics_port_file: Path | None = None
    http_port_file: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_port(self) -> int:
        assert self.http_port_file is not None, "this kvd was started with its own --http-address"
        return int(self.http_port_file.read_text())

    @property
    def http_url(self) -> str:
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port_file is not None, "this kvd was started with its own --metrics-address"
        return f"http://127.0.0.1:{int(self.metrics_port_file.read_text())}/metrics"

    def client(self, **kwargs):
        from kvserve.client import Client

        return Client(self.address, **{**self.client_options, **kwargs})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_kvd(repository: Path, *extra: str, env: dict[str, str] | None = None, wait_ready: bool = True, timeout: float = 120,
              client_options: dict | None = None, prefix: tuple[str, ...] = ()) -> Kvd:
    """Start kvd on a free port (port 0, read back from --port-file) and wait until it is live (and ready).

    Metrics and HTTP go to free ports too (``kvd.metrics_url``, ``kvd.http_url``) unless ``extra`` names
    --metrics-address / --http-address.
    """
    repository.mkdir(parents=True, exist_ok=True)
    port_file = repository.parent / f"{repository.name}.port"
    port_file.unlink(missing_ok=True)
    log_path = repository.parent / f"{repository.name}.kvd.log"
    metrics_port_file = None
    if "--metrics-address" not in extra:
        metrics_port_file = repository.parent / f"{repository.name}.metrics-port"
        extra = ("--metrics-address", "127.0.0.1:0", "--metrics-port-file", str(metrics_port_file), *extra)
    http_port_file = None
    if "--http-address" not in extra:
        http_port_file = repository.parent / f"{repository.name}.http-port"
        http_port_file.unlink(missing_ok=True)
        extra = ("--http-address", "127.0.0.1:0", "--http-port-file", str(http_port_file), *extra)
    args = [*prefix, sys.executable, "-m", "kvserve.server.main", "--repository", str(repository), "--address", "127.0.0.1:0",
            "--port-file", str(port_file), *extra]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"kvd did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    kvd = Kvd(repository, log_path, process, int(port_file.read_text()), list(extra), dict(client_options or {}), metrics_port_file,
              http_port_file)
    if wait_ready:
        with kvd.client(timeout=5) as client:
            while not client.ready():
                if time.monotonic() > deadline:
                    kvd.kill()
                    raise RuntimeError(f"kvd did not become ready:\n{kvd.log()}")
                time.sleep(0.1)
    return kvd


@pytest.fixture
def kvd_factory(tmp_path: Path) -> Iterator:
    """Start any number of kvd processes in a test; all are stopped afterwards."""
    started: list[Kvd] = []

    def factory(repository: Path | None = None, *extra: str, **kwargs) -> Kvd:
        kvd = start_kvd(repository or tmp_path / "repo", *extra, **kwargs)
        started.append(kvd)
        return kvd

    yield factory
    for kvd in started:
        kvd.kill()


@dataclass
class DigitsArtifacts:
    paths: dict[str, Path]
    x_test: np.ndarray
    y_test: np.ndarray
    keras_probs: np.ndarray
    keras_accuracy: float


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    """The digits CNN, trained once, saved as .h5, .keras and a zipped SavedModel; with Keras's answers."""
    import digits as digits_example

    out = tmp_path_factory.mktemp("digits")
    model, x_test, y_test = digits_example.train()
    paths = digits_example.save_all_formats(model, out)
    probs = np.asarray(model.predict(x_test, verbose=0))
    return DigitsArtifacts(paths, x_test, y_test, probs, float(np.mean(probs.argmax(1) == y_test)))


@pytest.fixture(scope="session")
def served_digits(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Iterator[Kvd]:
    """One kvd for the session, with the digits model uploaded as 'digits' (.h5, fp16) and 'digits32' (fp32)."""
    kvd = start_kvd(tmp_path_factory.mktemp("served") / "repo", "--access-log")  # tests read the per-call log lines
    try:
        with kvd.client() as client:
            client.upload(digits.paths["h5"], name="digits")
            client.upload(digits.paths["h5"], name="digits32", precision="fp32")
        yield kvd
    finally:
        kvd.kill()


# security tests (gRPC and HTTP): test certificates, a token file, a repository holding digits

@pytest.fixture
def daemon(tmp_path: Path) -> Iterator:
    """``daemon(**settings)``: a kvd built in this process (its event loop on a thread) on 127.0.0.1 and a free
    port, with models installed directly (test runners); stopped at the end of the test."""
    from kvserve.server.app import build, start
    from kvserve.server.settings import Settings

    made = []

    def make(**settings):
        built = build(Settings(repository=tmp_path / "repo", address="127.0.0.1:0", metrics_address="", **settings))
        start(built)
        made.append(built)
        return built

    yield make
    for built in made:
        built.stop(0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    """(security tests) A token file as an operator writes it: a comment, a blank line, extra spaces, mode 0600."""
    path = tmp_path / "tokens"
    path.write_text(f"# role token\nadmin {ADMIN_TOKEN}\n\nread  {READ_TOKEN}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def digits_repo(tmp_path: Path, served_digits) -> Path:
    copy_model(served_digits.repository, "digits", tmp_path / "repo")
    return tmp_path / "repo"
