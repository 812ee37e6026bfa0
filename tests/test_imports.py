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


def _heavy_modules_after(body: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, body=body)], capture_output=True, text=True, timeout=120)
    line = [l for l in result.stdout.splitlines() if l.startswith("HEAVY=")]
    assert line, result.stdout + result.stderr
    return line[-1].removeprefix("HEAVY=")


def test_import_client_loads_no_framework():
    assert _heavy_modules_after("import kvserve.client; kvserve.client.Client('127.0.0.1:1')") == ""


def test_kvctl_help_loads_no_framework():
    body = "sys.argv = ['kvctl', '--help']\nfrom kvserve.client.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    assert _heavy_modules_after(body) == ""


def test_kvctl_infer_path_loads_no_framework():
    # the modules infer uses (image decoding, tensors) are imported too
    assert _heavy_modules_after("import kvserve.client.cli, kvserve.client.inputs, kvserve.proto.tensors, PIL.Image") == ""


def test_plugin_modules_import_without_frameworks():
    # registering the built-in plugins must not import TensorFlow (only loading a TF-served model does)
    modules = _heavy_modules_after("from kvserve.plugins.manager import load_plugins; load_plugins()")
    assert "tensorflow" not in modules and "keras" not in modules
