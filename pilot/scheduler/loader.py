"""Queue the bundle files ``pilot bundle`` wrote (idempotent: known bundles are skipped)."""

from __future__ import annotations

import logging
from pathlib import Path

from lsst.resources import ResourcePath

from .service import Scheduler

_LOG = logging.getLogger(__name__)


def load_bundle_dir(scheduler: Scheduler, directory: Path) -> tuple[int, int]:
    """Queue every ``*.json`` bundle file in ``directory``; return ``(added, already known)``.

    No bundle files is fine: workflows may come later over the protocol (``POST /v1/workflows``).

    Raises
    ------
    BundleError
        One of the bundle files is invalid.
    """
    files = sorted(directory.glob("*.json"))
    added = 0
    for path in files:
        uri = str(ResourcePath(path.absolute()))
        bundle = scheduler.bundle(uri)
        added += scheduler.store.add_bundle(scheduler.row_for(bundle, uri), bundle.depends_on)
    _LOG.info("Queued %d new bundles from %s (%d known already).", added, directory, len(files) - added)
    return added, len(files) - added
