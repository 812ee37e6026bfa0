"""``make demo-inception``: the seed tutorial's model, served: InceptionV3 -> kvd -> labels for photos.

Offline by default: InceptionV3 is built with ``weights=None`` (random weights, so its classes mean nothing)
and classifies the two JPEG photos scikit-learn ships. With ``--weights imagenet`` (needs the weights file,
i.e. internet or a Keras cache) and ``--labels imagenet_class_index.json`` the answers are real ImageNet classes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from demo_kit import WORK, kvctl, running_kvd, step  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="None (offline, random) or imagenet")
    parser.add_argument("--labels", type=Path, help="a labels file for the 1000 ImageNet classes")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "photos").mkdir(parents=True)

    step(f"building Keras InceptionV3 (weights={args.weights})")
    import keras
    from PIL import Image
    from sklearn.datasets import load_sample_image

    model = keras.applications.InceptionV3(weights=args.weights)
    model_path = WORK / "inception.h5"
    model.save(model_path)
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(WORK / "photos" / name, quality=95)

    with running_kvd(WORK / "repository") as address:
        step("uploading: the Keras InceptionV3 preprocessing is suggested from the architecture")
        upload = ["upload", str(model_path), "--name", "inception"]
        kvctl(address, *(upload + (["--labels", str(args.labels)] if args.labels else [])))
        kvctl(address, "describe", "inception")
        step("classifying scikit-learn's sample photos")
        kvctl(address, "infer", "--model", "inception", "--top", "3", str(WORK / "photos"))
        if args.weights is None:
            print("(random weights: the classes are arbitrary; use --weights imagenet for real ones)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
