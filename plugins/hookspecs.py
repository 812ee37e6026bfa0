"""The plugin contract: what a kvserve plugin may provide.

The host passes a ``register`` callback (as Simon Willison's ``llm`` does) so a plugin can register any number
of converters or backends without the host caring how they are built. Built-in plugins use this same path.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "kvserve"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kvserve_register_converters(register: Callable[[object], None]) -> None:
    """Register model converters (objects following ``kvserve.plugins.types.Converter``)."""


@hookspec
def kvserve_register_backends(register: Callable[[object], None]) -> None:
    """Register device backends (objects following ``kvserve.plugins.types.Backend``)."""
