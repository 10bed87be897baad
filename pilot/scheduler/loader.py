"""Queue the bundle files ``pilot bundle`` wrote (idempotent: known bundles are skipped)."""

from __future__ import annotations

import logging
from pathlib import Path

from lsst.resources import ResourcePath

from ..errors import BundleError
from .service import Scheduler

_LOG = logging.getLogger(__name__)


def load_bundle_dir(scheduler: Scheduler, directory: Path) -> tuple[int, int]:
    """Queue every ``*.json`` bundle file in ``directory``; return ``(added, already known)``.

    Raises
    ------
    BundleError
        The directory has no bundle files, or one of them is invalid.
    """
    files = sorted(directory.glob("*.json"))
    if not files:
        raise BundleError(f"no bundle files (*.json) in {directory}")
    added = 0
    for path in files:
        uri = str(ResourcePath(path.absolute()))
        bundle = scheduler.bundle(uri)
        added += scheduler.store.add_bundle(scheduler.row_for(bundle, uri), bundle.depends_on)
    _LOG.info("Queued %d new bundles from %s (%d known already).", added, directory, len(files) - added)
    return added, len(files) - added
