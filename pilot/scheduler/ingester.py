"""Background ingest of committed bundles into the DBB, one at a time, in one thread.

One thread with one butler: ingests never race each other for the registry, and
``pilot.central.ingest`` (the code behind ``pilot ingest``) skips what is already registered,
so each dataset is registered exactly once however often a bundle is submitted.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from lsst.daf.butler import Butler
from lsst.resources import ResourcePath

from ..central.dbb_init import open_dbb
from ..central.ingest import ingest_bundle_dir
from .store import QueueStore

_LOG = logging.getLogger(__name__)


class Ingester:
    """Ingest submitted bundles from their staging directories (found by ``locate``)."""

    def __init__(self, repo: str, store: QueueStore, locate: Callable[[str], ResourcePath]) -> None:
        self._repo = repo
        self._store = store
        self._locate = locate
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._butler: Butler | None = None
        self._thread = threading.Thread(target=self._run, name="ingester", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, bundle_id: str) -> None:
        self._queue.put(bundle_id)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        if self._butler is not None:
            self._butler.close()

    def _run(self) -> None:
        while (bundle_id := self._queue.get()) is not None:
            try:
                if self._butler is None:
                    self._butler = open_dbb(self._repo, writeable=True)
                result = ingest_bundle_dir(self._butler, self._locate(bundle_id))
                if result is None:
                    raise RuntimeError("no committed manifest")
                _LOG.info("%s", result.describe())
                self._store.set_ingest(bundle_id, "done")
            except Exception as err:  # keep serving; the status endpoint counts failed ingests
                _LOG.error("Ingest of bundle %s failed: %s", bundle_id, err)
                self._store.set_ingest(bundle_id, "failed")
