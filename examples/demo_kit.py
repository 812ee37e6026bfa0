"""What the demos share: a kvd started on a demo repository and stopped afterwards, and kvctl shown as typed."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

WORK = Path(__file__).resolve().parent.parent / ".demo"
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def kvctl(address: str, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kvctl as a user would (and print the command and its output unless ``show`` is false)."""
    if show:
        print("$ kvctl " + " ".join(args), flush=True)
    result = subprocess.run([str(BIN / "kvctl"), "--server", address, *args], text=True, stdout=subprocess.PIPE)
    if show:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"kvctl {args[0]} failed with exit code {result.returncode}")
    return result


@contextlib.contextmanager
def running_kvd(repository: Path) -> Iterator[str]:
    """kvd on 127.0.0.1 and a free port for the duration of the block; yields its address."""
    step("starting kvd on a demo repository")
    port_file = WORK / "kvd.port"
    port_file.unlink(missing_ok=True)
    with open(WORK / "kvd.log", "wb") as log:
        process = subprocess.Popen([str(BIN / "kvd"), "--repository", str(repository), "--address", "127.0.0.1:0",
                                    "--port-file", str(port_file), "--metrics-address", "127.0.0.1:0"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"kvd did not start; see {WORK / 'kvd.log'}")
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        print(f"kvd is listening on {address} (log: {WORK / 'kvd.log'})")
        yield address
    finally:
        step("stopping kvd")
        process.send_signal(signal.SIGTERM)
        process.wait(30)
