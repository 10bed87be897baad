"""How URIs appear in messages: local files as plain paths, everything else as URIs."""

from __future__ import annotations

from lsst.resources import ResourcePath


def shown(uri: ResourcePath) -> str:
    """Return ``uri`` as an operator would type it."""
    return uri.ospath if uri.isLocal and uri.scheme == "file" else str(uri)
