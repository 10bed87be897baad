"""Find activator plugins by name through the ``quanta_pilot.activators`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Activator


def activator_class(name: str) -> type[Activator]:
    """Return the activator class registered as ``name``.

    Raises
    ------
    LookupError
        No activator has that name, or the plugin is not an `Activator`.
    """
    found = {ep.name: ep for ep in entry_points(group="quanta_pilot.activators")}
    if name not in found:
        raise LookupError(f"unknown activator {name!r}; installed: {', '.join(sorted(found)) or 'none'}")
    cls = found[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Activator)):
        raise LookupError(f"activator plugin {name!r} ({found[name].value}) is not an Activator")
    return cls
