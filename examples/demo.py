"""``make demo``: the main job end to end on an embedded default, offline.

Trains the digits CNN (scikit-learn's bundled digits, a few seconds), starts kvd on a demo repository,
uploads the model with its preprocessing and labels (``kvctl upload --preprocess unit --labels``), classifies
held-out digits written as PNG files with ``kvctl infer``, checks the answers against the true labels, and
stops kvd.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import digits  # noqa: E402

from demo_kit import WORK, kvctl, running_kvd, step  # noqa: E402


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    step("training a small CNN on scikit-learn's digits (offline, a few seconds)")
    model, x_test, y_test = digits.train()
    model_path = WORK / "digits.h5"
    model.save(model_path)
    keras_top1 = model.predict(x_test, verbose=0).argmax(1)
    print(f"Keras accuracy on {len(y_test)} held-out digits: {np.mean(keras_top1 == y_test):.3f}")
    pngs = digits.write_pngs(x_test, y_test, WORK / "pngs", count=10)
    labels = WORK / "labels.txt"
    labels.write_text("\n".join(digits.LABELS) + "\n")

    with running_kvd(WORK / "repository") as address:
        step("uploading: Keras .h5 -> OpenVINO IR, verified against Keras, loaded on the best device")
        kvctl(address, "upload", str(model_path), "--name", "digits", "--preprocess", "unit", "--labels", str(labels))
        kvctl(address, "describe", "digits")
        step(f"classifying {len(pngs)} held-out digits (8x8 PNG files) through kvd")
        kvctl(address, "infer", "--model", "digits", "--top", "3", str(WORK / "pngs"))
        result = kvctl(address, "infer", "--model", "digits", "--top", "1", "--json", str(WORK / "pngs"), show=False)
        predicted = [r["top"][0]["label"] for r in json.loads(result.stdout)["results"]]
        truth = [digits.LABELS[label] for _, label in pngs]
        print(f"predicted: {' '.join(predicted)}\ntrue:      {' '.join(truth)}")
        agree = sum(p == t for p, t in zip(predicted, truth))
        print(f"{agree} of {len(pngs)} correct; Keras itself gets {int(np.sum(keras_top1[:len(pngs)] == y_test[:len(pngs)]))}")
        kvctl(address, "list")
        if agree < len(pngs) - 1:
            raise SystemExit("the served model disagrees with the true labels more than Keras does")
    print("\ndone. Try it yourself: .venv/bin/kvd, then .venv/bin/kvctl upload / infer / list (see README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
