"""Find activator plugins by name through the ``quanta_pilot.activators`` entry points.

The project's own activators are also found without their entry points (`BUILT_IN`), so a
checkout whose installed metadata predates an activator (an editable install not redone
after a pull, a worktree run with ``PYTHONPATH``) still has them; an installed entry point
of the same name wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pilot.errors import ConfigError, PluginError, PluginNotFound

from .base import Activator

GROUP = "quanta_pilot.activators"

BUILT_IN = {
    "in-process": "activators.in_process:InProcessActivator",
    "exec": "activators.exec:ExecActivator",
    "container": "activators.container:ContainerActivator",
}
"""The project's own activators (as in pyproject.toml's entry points), found even where the
installed entry points predate them."""


def activator_class(name: str) -> type[Activator]:
    """Return the activator class registered as ``name``.

    Raises
    ------
    PluginNotFound
        No activator has that name.
    PluginError
        The plugin fails to import, or is not an `Activator`.
    """
    found = {name: EntryPoint(name, value, GROUP) for name, value in BUILT_IN.items()}
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


def check_activator_settings(
    default: str, by_label: Mapping[str, str], settings: Mapping[str, Mapping[str, Any]]
) -> None:
    """Check that every activator named exists and accepts its settings (bundling time).

    Raises
    ------
    PluginNotFound, PluginError
        An activator cannot be found or loaded.
    ConfigError
        An activator rejects its settings.
    """
    labels: dict[str, set[str]] = {}
    for label, name in by_label.items():
        labels.setdefault(name, set()).add(label)
    for name in sorted({default, *labels, *settings}):
        try:
            activator_class(name).check_settings(settings.get(name, {}), frozenset(labels.get(name, ())))
        except ValueError as err:
            raise ConfigError(str(err)) from None
