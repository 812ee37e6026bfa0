"""Make the README quick start's files: a small digits CNN, its labels, and a few digit images to classify.

    python examples/quickstart_files.py quickstart

writes ``quickstart/digits.keras`` (trained for a few seconds on scikit-learn's bundled 8x8 digits; nothing is
downloaded), ``quickstart/labels.txt`` (zero..nine, one per line) and ``quickstart/digits/*.png`` (held-out
digits as 8x8 grayscale PNGs, the true label in each file name).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import digits  # noqa: E402 - examples/digits.py, next to this file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("quickstart"), help="folder to write into (default: quickstart)")
    parser.add_argument("--images", type=int, default=10, help="how many digit PNGs to write")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    model, x_test, y_test = digits.train()
    model.save(out / "digits.keras")
    (out / "labels.txt").write_text("\n".join(digits.LABELS) + "\n")
    written = digits.write_pngs(x_test, y_test, out / "digits", count=parser.parse_args(argv).images)
    print(f"wrote {out / 'digits.keras'}, {out / 'labels.txt'} and {len(written)} images in {out / 'digits'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
