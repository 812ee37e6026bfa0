"""Third-party plugins, end to end: found through the ``kvserve`` entry-point group by a real kvd.

The example package (examples/kvserve-example-backend) is installed with pip into a temporary ``--target``
directory that kvd gets on its PYTHONPATH; entry points are discovered by importlib.metadata from the
.dist-info directory there, exactly as from site-packages. A broken plugin is a hand-written .dist-info whose
module raises at import. Every kvd is started through ``kvd_factory`` and stopped at teardown.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from plugin_sites import pythonpath, write_dist

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kvserve-example-backend"
KVCTL = Path(sys.executable).parent / "kvctl"
BUILTIN_DEVICES = {"CPU", "GPU", "MYRIAD", "TF"}


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed into a fresh directory (not the venv), as pip would install it."""
    work = tmp_path_factory.mktemp("example-plugin")
    # Build from a copy: an in-tree setuptools build would leave build/ and *.egg-info in examples/.
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    if pip.returncode != 0:
        # Offline fallback (e.g. no setuptools in the venv): lay the package out by hand, as the wheel would.
        print(f"pip install failed, installing the example by hand:\n{pip.stdout}\n{pip.stderr}")
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir()
        shutil.copy(source / "kvserve_example_backend.py", site)
        write_dist(site, "kvserve-example-backend", "0.1.0", {"example": "kvserve_example_backend"})
    assert (site / "kvserve_example_backend.py").is_file()
    assert "example = kvserve_example_backend" in next(site.glob("*.dist-info/entry_points.txt")).read_text()
    return site


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plugin whose module raises at import."""
    site = tmp_path_factory.mktemp("broken-plugin")
    (site / "kvserve_broken_plugin.py").write_text('raise RuntimeError("boom")\n')
    write_dist(site, "kvserve-broken-plugin", "0.0.1", {"broken": "kvserve_broken_plugin"})
    return site


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """kvd inherits this process's environment: a KVSERVE_PLUGINS set by the developer must not leak in."""
    monkeypatch.delenv("KVSERVE_PLUGINS", raising=False)


def _kvctl_json(address: str, *command: str) -> object:
    done = subprocess.run([str(KVCTL), "--server", address, *command, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kvctl {' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["name"]: row for row in rows}


def test_example_backend_serves_digits(kvd_factory, example_site, digits) -> None:
    kvd = kvd_factory(env=pythonpath(example_site))
    with kvd.client(timeout=120) as client:
        devices = _by_name(client.devices())
        assert BUILTIN_DEVICES <= set(devices), devices.keys()
        latency = devices["CPU_LATENCY"]
        assert latency["available"], latency
        assert latency["reason"] == ""
        assert "latency profile" in latency["full_name"]
        assert latency["plugin"] == "kvserve_example_backend"
        assert latency["properties"]["PERFORMANCE_HINT"] == "LATENCY"
        assert set(latency["precisions"]) == {"fp32", "fp16"}

        plugins = _by_name(client.plugins())
        example = plugins["example"]
        assert example["version"] == "0.1.0"
        assert example["hooks"] == ["kvserve_register_backends"]
        assert example["builtin"] is False and example["error"] == ""

        manifest = client.upload(digits.paths["h5"], name="digits", devices=["CPU_LATENCY"], timeout=600)
        assert manifest["served_by"]["backend"] == "CPU_LATENCY", manifest.get("served_by")
        described = client.describe("digits")
        assert described["device"] == "CPU_LATENCY", described
        assert described["state"] == "READY", described

        outputs = client.infer("digits", digits.x_test)
        assert len(outputs) == 1, outputs.keys()
        probs = next(iter(outputs.values()))
        assert probs.shape == digits.keras_probs.shape
        diff = float(np.max(np.abs(probs - digits.keras_probs)))
        assert diff < 1e-2, f"max abs diff {diff:.3g} vs Keras"
        mismatched = np.flatnonzero(probs.argmax(1) != digits.keras_probs.argmax(1))
        assert mismatched.size == 0, f"top-1 differs from Keras on samples {mismatched.tolist()}"
        # One sample at a time, the latency profile's use case, gives the same answers as the batch.
        single = next(iter(client.infer("digits", digits.x_test[:1]).values()))
        np.testing.assert_allclose(single, probs[:1], atol=1e-5)


def test_broken_plugin_is_reported_not_fatal(kvd_factory, example_site, broken_site) -> None:
    kvd = kvd_factory(env=pythonpath(broken_site, example_site))
    assert kvd.process.poll() is None
    with kvd.client() as client:
        assert client.ready()
        plugins = _by_name(client.plugins())
        broken = plugins["broken"]
        assert "boom" in broken["error"] and "RuntimeError" in broken["error"], broken
        assert broken["hooks"] == [] and broken["builtin"] is False
        assert plugins["example"]["error"] == ""  # the good plugin next to it still loads
        devices = _by_name(client.devices())
        assert BUILTIN_DEVICES | {"CPU_LATENCY"} <= set(devices), devices.keys()
        assert devices["CPU"]["available"] and devices["TF"]["available"]
    # kvctl plugins shows the same failure
    shown = _by_name(_kvctl_json(kvd.address, "plugins"))
    assert "boom" in shown["broken"]["error"]
    assert "plugin broken failed to load" in kvd.log()


@pytest.mark.parametrize("allow", ["broken", "some-other-plugin"])
def test_allow_list_excludes_example(kvd_factory, example_site, broken_site, allow: str) -> None:
    kvd = kvd_factory(env={**pythonpath(example_site, broken_site), "KVSERVE_PLUGINS": allow})
    with kvd.client() as client:
        devices = _by_name(client.devices())
        assert "CPU_LATENCY" not in devices
        assert BUILTIN_DEVICES <= set(devices)  # built-ins are not subject to the allow-list
        plugins = _by_name(client.plugins())
        assert "example" not in plugins
        if allow == "broken":
            assert "boom" in plugins["broken"]["error"]  # allowed, so imported, so it fails
        else:
            assert "broken" not in plugins  # not allowed: never imported, so no error either
        with pytest.raises(grpc.RpcError) as raised:
            client.upload(ROOT / "pyproject.toml", name="nope", devices=["CPU_LATENCY"])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "CPU_LATENCY" in raised.value.details()


def test_allow_list_admits_example_only(kvd_factory, example_site, broken_site) -> None:
    kvd = kvd_factory(env={**pythonpath(example_site, broken_site), "KVSERVE_PLUGINS": " example , "})
    with kvd.client() as client:
        assert _by_name(client.devices())["CPU_LATENCY"]["available"]
        plugins = _by_name(client.plugins())
        assert plugins["example"]["error"] == ""
        assert "broken" not in plugins


def test_kvctl_devices_json(kvd_factory) -> None:
    kvd = kvd_factory()
    found = _kvctl_json(kvd.address, "devices")
    assert isinstance(found, list) and found
    for device in found:
        assert {"name", "available", "reason"} <= set(device), device
        assert isinstance(device["available"], bool)
    devices = _by_name(found)
    for name in ("CPU", "TF"):
        assert devices[name]["available"] is True and devices[name]["reason"] == "", devices[name]
    for name in ("GPU", "MYRIAD"):
        assert devices[name]["available"] is False, devices[name]
        assert devices[name]["reason"].strip(), devices[name]
    assert "MYRIAD" in devices["MYRIAD"]["reason"]


# Plugins that import fine but misbehave afterwards: each is reported and skipped, never fatal.
MISBEHAVING = {
    # a misspelled hook name: pluggy's validation fails for this plugin only
    "unknown_hook": "from kvserve.plugins.hookspecs import hookimpl\n\n"
                    "@hookimpl\ndef kvserve_register_backend(register):  # typo: no such hook (boom)\n    pass\n",
    # the registration hook itself raises
    "hook_raises": "from kvserve.plugins.hookspecs import hookimpl\n\n"
                   "@hookimpl\ndef kvserve_register_backends(register):\n    raise RuntimeError('boom')\n",
    # availability() raises: that device is unavailable with the reason, the others are listed
    "availability_raises": "from kvserve.plugins.hookspecs import hookimpl\n\n"
                           "class Flaky:\n    name = 'FLAKY'\n    def availability(self):\n        raise RuntimeError('boom')\n\n"
                           "@hookimpl\ndef kvserve_register_backends(register):\n    register(Flaky())\n",
}


@pytest.mark.parametrize("case", sorted(MISBEHAVING))
def test_plugin_failing_after_import_is_not_fatal(kvd_factory, tmp_path, case: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / f"kvserve_{case}.py").write_text(MISBEHAVING[case])
    write_dist(site, f"kvserve-{case}", "0.0.1", {case: f"kvserve_{case}"})
    kvd = kvd_factory(env=pythonpath(site), timeout=60)
    with kvd.client() as client:
        devices = _by_name(client.devices())
        assert devices["CPU"]["available"] and devices["TF"]["available"]
        plugin = _by_name(client.plugins()).get(case, {})
        expected = "unknown hook 'kvserve_register_backend'" if case == "unknown_hook" else "boom"
        assert expected in plugin.get("error", "") or any(expected in d["reason"] for d in devices.values())
