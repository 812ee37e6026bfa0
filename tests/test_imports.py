"""The client side stays thin: importing kvserve.client or running kvctl never imports TF/OpenVINO/Keras/NNCF."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("tensorflow", "openvino", "keras", "nncf")

PROBE = """
import atexit, sys
heavy = {heavy!r}
atexit.register(lambda: print("HEAVY=" + ",".join(sorted({{m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}}))))
{body}
"""


def _heavy_modules_after(body: str, heavy: tuple[str, ...] = HEAVY) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=heavy, body=body)], capture_output=True, text=True, timeout=120)
    line = [l for l in result.stdout.splitlines() if l.startswith("HEAVY=")]
    assert line, result.stdout + result.stderr
    return line[-1].removeprefix("HEAVY=")


def test_import_client_loads_no_framework():
    assert _heavy_modules_after("import kvserve.client; kvserve.client.Client('127.0.0.1:1')") == ""


def _kvctl(*args: str) -> str:
    """A probe body that runs ``kvctl ARGS`` in the probe's process."""
    return f"sys.argv = ['kvctl', *{args!r}]\nfrom kvserve.client.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"


def test_kvctl_help_loads_no_framework():
    assert _heavy_modules_after(_kvctl("--help")) == ""


def test_kvctl_infer_path_loads_no_framework():
    # the modules infer uses (image decoding, tensors) are imported too
    assert _heavy_modules_after("import kvserve.client.cli, kvserve.client.inputs, kvserve.proto.tensors, PIL.Image") == ""


def test_plugin_modules_import_without_frameworks():
    # registering the built-in plugins must not import TensorFlow (only loading a TF-served model does)
    modules = _heavy_modules_after("from kvserve.plugins.manager import load_plugins; load_plugins()")
    assert "tensorflow" not in modules and "keras" not in modules


def test_kvctl_help_loads_no_matplotlib():
    # matplotlib is imported only when `kvctl benchmark --plot` draws a chart
    assert _heavy_modules_after(_kvctl("benchmark", "--help"), HEAVY + ("matplotlib",)) == ""
