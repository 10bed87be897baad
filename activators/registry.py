"""Find activator plugins by name through the ``quanta_pilot.activators`` entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from pilot.errors import PluginError, PluginNotFound

from .base import Activator

GROUP = "quanta_pilot.activators"

BUILTIN = {
    "in-process": "activators.in_process:InProcessActivator",
    "container": "activators.container:ContainerActivator",
}
"""The project's own activators, found even where the installed entry points predate them."""


def activator_class(name: str) -> type[Activator]:
    """Return the activator class registered as ``name``.

    Raises
    ------
    PluginNotFound
        No activator has that name.
    PluginError
        The plugin fails to import, or is not an `Activator`.
    """
    found = {name: EntryPoint(name, value, GROUP) for name, value in BUILTIN.items()}
    found.update({ep.name: ep for ep in entry_points(group=GROUP)})
    if name not in found:
        raise PluginNotFound(f"unknown activator {name!r}; installed: {', '.join(sorted(found)) or 'none'}")
    entry_point = found[name]
    try:
        cls = entry_point.load()
    except Exception as err:
        raise PluginError(
            f"activator plugin {name!r} ({entry_point.value}) cannot be loaded: {type(err).__name__}: {err}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Activator)):
        raise PluginError(f"activator plugin {name!r} ({entry_point.value}) is not an Activator")
    return cls
