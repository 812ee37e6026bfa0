"""Install a plugin for a real kvd without touching the venv: a directory put on kvd's PYTHONPATH, holding the
plugin module and a hand-written .dist-info whose entry points importlib.metadata finds as in site-packages."""

from __future__ import annotations

import os
from pathlib import Path


def write_dist(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution: what importlib.metadata needs to find its entry points."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kvserve]\n{lines}")


def pythonpath(*sites: Path) -> dict[str, str]:
    """The environment that puts ``sites`` on a kvd's import path (before any PYTHONPATH already set)."""
    existing = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {"PYTHONPATH": os.pathsep.join([str(s) for s in sites] + existing)}


# Devices this host may or may not have are simulated, so the device-preference tests mean the same on every
# machine: NOCARD is never available, BROKEN is available but fails every load.
FAKE_DEVICES_PLUGIN = '''
from kvserve.plugins.hookspecs import hookimpl
from kvserve.plugins.types import Availability


class NoCard:
    name = "NOCARD"

    def availability(self):
        return Availability(False, "simulated: no such card in this host")

    def can_serve(self, manifest):
        return None

    def load(self, request):
        raise AssertionError("an unavailable device is never asked to load")


class Broken:
    name = "BROKEN"

    def availability(self):
        return Availability(True, "", "a simulated device whose loads fail")

    def can_serve(self, manifest):
        return None

    def load(self, request):
        raise RuntimeError("simulated driver failure")


@hookimpl
def kvserve_register_backends(register):
    register(NoCard())
    register(Broken())
'''


def fake_devices_site(site: Path) -> Path:
    """A plugin directory providing the NOCARD and BROKEN devices."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "kvserve_fake_devices.py").write_text(FAKE_DEVICES_PLUGIN)
    write_dist(site, "kvserve-fake-devices", "0.0.1", {"fake-devices": "kvserve_fake_devices"})
    return site
