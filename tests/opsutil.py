"""Helpers for the operations tests: copy published models between repositories (no 8 s conversion), find
converter children, scrape metrics, make throw-away TLS certificates with the openssl CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable


def copy_model(source_repo: Path, name: str, target_repo: Path, as_name: str | None = None, version: int = 1,
               as_version: int | None = None) -> Path:
    """Copy a published version directory (what an upload leaves) into another repository."""
    as_name, as_version = as_name or name, as_version or version
    target = target_repo / as_name / str(as_version)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source_repo / name / str(version), target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(name=as_name, version=str(as_version))
    manifest_path.write_text(json.dumps(manifest))
    return target


def converter_children(repository: Path) -> list[int]:
    """PIDs of converter child processes working for ``repository`` (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "kvserve.server.uploads.convert_child" in cmdline and str(repository) in cmdline:
            pids.append(int(proc.name))
    return pids


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus endpoint as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def staging_entries(repository: Path) -> list[str]:
    return sorted(p.name for p in (repository / ".staging").iterdir())


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kvserve test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=kvserve test {who}", "-keyout", f"{who}.key",
                "-out", f"{who}.csr")
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{who}.ext", "-out", f"{who}.pem")
    for key in folder.glob("*.key"):
        os.chmod(key, 0o600)
    return {name: folder / f"{name}" for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


ADMIN_TOKEN = "admin-" + "a" * 32  # the tokens conftest's `tokens` fixture writes
READ_TOKEN = "read-" + "b" * 32
