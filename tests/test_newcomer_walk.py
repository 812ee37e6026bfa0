"""A newcomer's walk, on a real terminal (pexpect + bash): the README quick start pasted line by line, verbatim,
then every documented exit code of kvctl, with no traceback anywhere.

The walk runs in a scratch folder that links this checkout's .venv, Makefile and examples, so every file it
creates (quickstart/) stays there. Only the environment differs from a newcomer's: kvd's ports are free ones
(KVSERVE_ADDRESS / KVSERVE_SERVER and friends), so the walk never collides with another kvd on 8500.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "WALK-PROMPT> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def quick_start_lines() -> list[str]:
    """The commands of the README's quick start block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.strip().splitlines():
        command = line.split("  #", 1)[0].strip()
        if command:
            lines.append(command)
    return lines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Shell:
    """bash on a pseudo-terminal; ``run`` returns (output, exit code) of one command line."""

    def __init__(self, pexpect, cwd: Path, env: dict[str, str]) -> None:
        self.pexpect = pexpect
        self.child = pexpect.spawn("bash", ["--norc", "--noprofile"], cwd=str(cwd), env=env, encoding="utf-8",
                                   timeout=900, dimensions=(60, 200))
        self.child.sendline(f"PS1='{PROMPT}'; PS2=''")
        self.child.expect_exact(PROMPT)
        self.child.expect_exact(PROMPT)
        self.transcript: list[str] = []

    def run(self, line: str, timeout: float = 900) -> tuple[str, int]:
        self.child.sendline(line)
        self.child.expect_exact(PROMPT, timeout=timeout)
        output = ANSI.sub("", self.child.before)
        self.child.sendline("echo rc=$?")
        self.child.expect(r"rc=(\d+)")
        code = int(self.child.match.group(1))
        self.child.expect_exact(PROMPT)
        self.transcript.append(f"$ {line}\n{output}\n[exit {code}]")
        return output, code

    def close(self) -> None:
        self.child.sendline("kill %1 2>/dev/null; exit")
        self.child.expect(self.pexpect.EOF, timeout=60)


def test_readme_quick_start_and_every_exit_code(tmp_path):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the walk on a terminal (pip install -e '.[dev]')")
    for name in (".venv", "Makefile", "pyproject.toml", "examples", "README.md"):
        (tmp_path / name).symlink_to(ROOT / name)
    for name in ("client", "server", "proto", "plugins"):  # `make install` would read these; it is a no-op when current
        (tmp_path / name).symlink_to(ROOT / name)
    port = _free_port()
    env = {**os.environ, "KVSERVE_ADDRESS": f"127.0.0.1:{port}", "KVSERVE_SERVER": f"127.0.0.1:{port}",
           "KVSERVE_METRICS_ADDRESS": "127.0.0.1:0", "KVSERVE_HTTP_ADDRESS": "127.0.0.1:0", "TERM": "xterm", "COLUMNS": "200",
           "PATH": "/usr/bin:/bin"}  # kvd and kvctl must come from the venv the quick start activates
    env.pop("VIRTUAL_ENV", None)
    lines = quick_start_lines()
    assert lines[0] == "make install" and lines[1] == "source .venv/bin/activate"
    assert any(line.startswith("python examples/quickstart_files.py") for line in lines)
    up_to_date = subprocess.run(["make", "-q", "install"], cwd=tmp_path, capture_output=True).returncode == 0

    shell = Shell(pexpect, tmp_path, env)
    try:
        for line in lines:
            if line == "make install" and not up_to_date:
                continue  # pyproject.toml changed since this venv was made: do not reinstall the shared venv from here
            if line.startswith("kvctl delete"):
                _every_exit_code(shell, port)
            if line == "kvctl status":
                _until_ready(shell, line)
                continue
            output, code = shell.run(line)
            assert code == 0, "\n\n".join(shell.transcript)
            assert "Traceback" not in output, "\n\n".join(shell.transcript)
        infer = next(t for t in shell.transcript if "kvctl infer --model digits" in t)
        assert re.search(r"digit_\d\d_label2\.png\s*│\s*two", infer), infer  # a held-out digit named right
        assert (tmp_path / "quickstart" / "speed.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        shell.close()
    assert "Traceback" not in "\n".join(shell.transcript)


def _until_ready(shell: Shell, line: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        output, code = shell.run(line)
        assert "Traceback" not in output
        if code == 0 and "ready=True" in output:
            return
        assert time.monotonic() < deadline, "\n\n".join(shell.transcript)
        time.sleep(1)


def _every_exit_code(shell: Shell, port: int) -> None:
    """0 to 4 as docs/cli.md documents them, each error one line without a traceback."""
    cases = [
        ("kvctl list", 0),
        ("kvctl describe no-such-model", 1),
        ("kvctl infer --model digits --top 0 quickstart/digits/", 2),
        ("kvctl infer --model digits quickstart/labels.txt", 2),
        ("kvctl infer --model digits quickstart/digits/digit_00_label2.png quickstart/missing.png", 3),
        ("kvctl --server 127.0.0.1:1 list", 4),
        (f"kvctl --server http://127.0.0.1:{port} list", 4),
        ("kvctl --server no-such-host.invalid list", 4),
    ]
    for line, expected in cases:
        output, code = shell.run(line, timeout=180)
        assert code == expected, "\n\n".join(shell.transcript)
        assert "Traceback" not in output
        if expected:
            assert "error" in output.lower(), output
