"""``make demo``: the main job end to end on an embedded default, offline.

Trains the digits CNN (scikit-learn's bundled digits, a few seconds), starts kvd on a demo repository,
uploads the model with ``kvctl upload``, classifies held-out digits with ``kvctl infer``, checks the answers
against the true labels, and stops kvd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import digits  # noqa: E402

WORK = HERE.parent / ".demo"
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def kvctl(address: str, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "kvctl"), "--server", address, *args]
    if show:
        print("$ kvctl " + " ".join(args), flush=True)
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE)
    if show:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"kvctl {args[0]} failed with exit code {result.returncode}")
    return result


def start_kvd(repository: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = WORK / "kvd.port"
    port_file.unlink(missing_ok=True)
    log = open(WORK / "kvd.log", "wb")
    process = subprocess.Popen([str(BIN / "kvd"), "--repository", str(repository), "--address", "127.0.0.1:0",
                                "--port-file", str(port_file)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"kvd did not start; see {WORK / 'kvd.log'}")
        time.sleep(0.1)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    step("training a small CNN on scikit-learn's digits (offline, a few seconds)")
    model, x_test, y_test = digits.train()
    model_path = WORK / "digits.h5"
    model.save(model_path)
    keras_top1 = model.predict(x_test, verbose=0).argmax(1)
    print(f"Keras accuracy on {len(y_test)} held-out digits: {np.mean(keras_top1 == y_test):.3f}")
    samples = WORK / "samples.npy"
    np.save(samples, x_test[:8])

    step("starting kvd on a demo repository")
    process, address = start_kvd(WORK / "repository")
    try:
        print(f"kvd is listening on {address} (log: {WORK / 'kvd.log'})")
        step("uploading: Keras .h5 -> OpenVINO IR, verified against Keras, loaded on the best device")
        kvctl(address, "upload", str(model_path), "--name", "digits")
        kvctl(address, "describe", "digits")
        step("classifying 8 held-out digits through kvd")
        kvctl(address, "infer", "--model", "digits", "--top", "3", str(samples))
        result = kvctl(address, "infer", "--model", "digits", "--top", "1", "--json", str(samples), show=False)
        predicted = [r["top"][0]["index"] for r in json.loads(result.stdout)["results"]]
        print(f"predicted: {predicted}\ntrue:      {y_test[:8].tolist()}")
        agree = sum(p == t for p, t in zip(predicted, y_test[:8].tolist()))
        print(f"{agree} of 8 correct; Keras itself gets {int(np.sum(keras_top1[:8] == y_test[:8]))} of 8")
        kvctl(address, "list")
    finally:
        step("stopping kvd")
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    print("\ndone. Try it yourself: .venv/bin/kvd, then .venv/bin/kvctl upload / infer / list (see README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
