"""Regenerate the Python gRPC stubs from the .proto sources: ``python -m kvserve.proto.generate``.

The sources are compiled as ``kvserve/proto/<file>.proto`` so the generated modules import each other as
``kvserve.proto.*``, and each generated ``*_pb2.py`` is rewritten to register in kvserve's private descriptor pool
(``kvserve.proto._pool``) instead of protobuf's default one: our ``inference``, ``tensorflow`` and
``tensorflow.serving`` symbols then never collide with tritonclient's or TensorFlow's in one process.
``--check`` regenerates into a temporary directory and fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SOURCES = ("model_config.proto", "grpc_service.proto", "kvserve_service.proto", "tensorflow_tensor.proto",
           "tensorflow_serving.proto")
PACKAGE_PATH = Path("kvserve") / "proto"


def generated_names() -> list[str]:
    names: list[str] = []
    for source in SOURCES:
        stem = source.removesuffix(".proto")
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return names


def generate(out_dir: Path) -> None:
    """Compile every source into ``out_dir`` (which receives only the generated files)."""
    from grpc_tools import protoc  # build-time dependency only

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = root / PACKAGE_PATH
        package.mkdir(parents=True)
        for source in SOURCES:
            text = (PROTO_DIR / source).read_text()
            text = re.sub(r'^import "([^"/]+\.proto)";', rf'import "{PACKAGE_PATH.as_posix()}/\1";', text, flags=re.M)
            (package / source).write_text(text)
        well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
        args = ["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={root}", f"--pyi_out={root}", f"--grpc_python_out={root}"]
        args += [(PACKAGE_PATH / s).as_posix() for s in SOURCES]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in generated_names():
            shutil.copyfile(package / name, out_dir / name)
            if name.endswith("_pb2.py"):
                private_pool(out_dir / name)


DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
POOL_IMPORT = "from google.protobuf.internal import builder as _builder\n"


def private_pool(path: Path) -> None:
    """Make a generated module register its file in ``kvserve.proto._pool.POOL`` (see the module docstring)."""
    text = path.read_text()
    if text.count(DEFAULT_POOL) != 1 or POOL_IMPORT not in text:
        raise SystemExit(f"{path.name}: unexpected protoc output; update kvserve.proto.generate.private_pool")
    text = text.replace(POOL_IMPORT, POOL_IMPORT + "from kvserve.proto import _pool\n", 1)
    path.write_text(text.replace(DEFAULT_POOL, "_pool.POOL.AddSerializedFile(", 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are out of date")
    args = parser.parse_args(argv)
    if not args.check:
        generate(PROTO_DIR)
        print(f"regenerated {len(generated_names())} files in {PROTO_DIR}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in generated_names() if not (PROTO_DIR / n).exists() or not filecmp.cmp(PROTO_DIR / n, Path(tmp) / n, shallow=False)]
    if stale:
        print("stubs out of date, run `python -m kvserve.proto.generate`: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("stubs match proto/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
