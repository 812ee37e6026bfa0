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


@hookspec
def kvserve_register_keras_objects(register: Callable[..., None]) -> None:
    """Register custom Keras layers, ``keras.Model`` subclasses, activations, losses ... that uploaded models use:
    ``register(obj)`` (under its class or function name) or ``register(obj, "Name")``. Called in the processes
    that load Keras models (the converter child, the TF backend), never merely because kvd starts."""
