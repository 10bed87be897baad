"""Find stager plugins by URI scheme through the ``quanta_pilot.stagers`` entry points."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from lsst.resources import ResourcePath

from .base import Stager


@functools.cache
def _stagers_by_scheme() -> dict[str, type[Stager]]:
    found: dict[str, type[Stager]] = {}
    for entry_point in entry_points(group="quanta_pilot.stagers"):
        cls = entry_point.load()
        if not (isinstance(cls, type) and issubclass(cls, Stager)):
            raise TypeError(f"stager plugin {entry_point.name!r} ({entry_point.value}) is not a Stager")
        for scheme in cls.schemes:
            found.setdefault(scheme, cls)
    return found


def stager_for(uri: ResourcePath) -> Stager:
    """Return a stager for ``uri``'s scheme.

    Raises
    ------
    LookupError
        No installed stager serves that scheme.
    """
    try:
        return _stagers_by_scheme()[uri.scheme]()
    except KeyError:
        known = ", ".join(sorted(s for s in _stagers_by_scheme() if s)) or "none"
        raise LookupError(f"no stager for {uri.scheme!r} URIs ({uri}); installed: {known}") from None
