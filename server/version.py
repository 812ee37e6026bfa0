"""The daemon's name and version as reported by ServerMetadata and ``kvd --version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SERVER_NAME = "kvserve"

try:
    SERVER_VERSION = version("kvserve")
except PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0+local"
