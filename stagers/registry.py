"""Find stager plugins by URI scheme through the ``quanta_pilot.stagers`` entry points."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from lsst.resources import ResourcePath

from pilot.errors import PluginError, PluginNotFound

from .base import Stager

GROUP = "quanta_pilot.stagers"


@functools.cache
def _stagers_by_scheme() -> dict[str, type[Stager]]:
    found: dict[str, type[Stager]] = {}
    for entry_point in entry_points(group=GROUP):
        try:
            cls = entry_point.load()
        except Exception as err:
            raise PluginError(
                f"stager plugin {entry_point.name!r} ({entry_point.value}) cannot be loaded: "
                f"{type(err).__name__}: {err}"
            ) from err
        if not (isinstance(cls, type) and issubclass(cls, Stager)):
            raise PluginError(f"stager plugin {entry_point.name!r} ({entry_point.value}) is not a Stager")
        for scheme in cls.schemes:
            found.setdefault(scheme, cls)
    return found


def stager_for(uri: ResourcePath) -> Stager:
    """Return a stager for ``uri``'s scheme.

    Raises
    ------
    PluginNotFound
        No installed stager serves that scheme.
    PluginError
        An installed stager plugin fails to import, or is not a `Stager`.
    """
    stagers = _stagers_by_scheme()
    try:
        return stagers[uri.scheme]()
    except KeyError:
        known = ", ".join(sorted(s for s in stagers if s)) or "none"
        raise PluginNotFound(f"no stager for {uri.scheme!r} URIs ({uri}); installed: {known}") from None
