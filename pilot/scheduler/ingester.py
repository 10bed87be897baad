"""Background ingest of committed bundles into the DBB, one at a time, in one thread.

One thread with one butler, in the leading replica only (`pilot.scheduler.leadership`):
ingests never race each other for the registry, and ``pilot.central.ingest`` (the code
behind ``pilot ingest``) skips what is already registered, so each dataset is registered
exactly once however often a bundle is ingested.  The work list is the queue database's
(bundles whose ``ingest`` is ``pending``), not this process's memory: a bundle reported to
another replica, or staged before a restart, is ingested all the same.  A report to this
replica wakes the thread at once; otherwise it looks every ``poll`` seconds.

When the queue runs dry, the same thread brings the stack's provenance graph of each run
it ingested into up to date (`pilot.central.provenance_graph`, as ``pilot ingest`` does):
written once all of a run's quanta ended in ingested bundles, rewritten after a remainder's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lsst.daf.butler import Butler
from lsst.resources import ResourcePath

from ..central.dbb_init import open_dbb
from ..central.ingest import ingest_bundle_dir
from ..central.provenance_graph import update_provenance_in
from .store import QueueStore

_LOG = logging.getLogger(__name__)


class Ingester:
    """Ingest staged bundles from their staging directories (found by ``locate``) while leading."""

    def __init__(
        self,
        repo: str,
        store: QueueStore,
        locate: Callable[[str], ResourcePath],
        leads: Callable[[], bool] = lambda: True,
        poll: float = 2.0,
    ) -> None:
        self._repo = repo
        self._store = store
        self._locate = locate
        self._leads = leads
        self._poll = poll
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._butler: Butler | None = None
        self._thread = threading.Thread(target=self._run, name="ingester", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, bundle_id: str) -> None:
        """``bundle_id`` was just staged: look for pending ingests now."""
        self.wake()

    def wake(self) -> None:
        """Look for pending ingests now, not at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=60)
        if self._butler is not None:
            self._butler.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._poll)
            self._wake.clear()
            try:
                if self._stopping.is_set() or not self._leads():
                    continue
                pending = self._store.pending_ingests()
            except Exception as err:  # the database is away: try again at the next poll
                _LOG.error("Cannot read the ingest queue: %s", err)
                continue
            try:
                self._ingest_all(pending)
            except Exception as err:  # the database went away mid-pass: the rest stay pending
                _LOG.error("Ingest pass stopped: %s", err)

    def _ingest_all(self, pending: list[str]) -> None:
        touched: set[tuple[str, str]] = set()  # (staging root, output run) ingested in this pass
        for bundle_id in pending:
            if self._stopping.is_set():
                break
            if (ingested := self._ingest(bundle_id)) is not None:
                touched.add(ingested)
        self._update_provenance(touched)

    def _ingest(self, bundle_id: str) -> tuple[str, str] | None:
        """Ingest one bundle; return its (staging root, output run), or None if it failed."""
        try:
            if self._butler is None:
                self._butler = open_dbb(self._repo, writeable=True)
            directory = self._locate(bundle_id)
            result = ingest_bundle_dir(self._butler, directory)
            if result is None:
                raise RuntimeError("no committed manifest")
            _LOG.info("%s", result.describe())
            self._store.set_ingest(bundle_id, "done")
            return str(directory.parent()), result.output_run
        except Exception as err:  # keep serving; the status endpoint counts failed ingests
            _LOG.error("Ingest of bundle %s failed: %s", bundle_id, err)
            self._store.set_ingest(bundle_id, "failed")
            return None

    def _update_provenance(self, touched: set[tuple[str, str]]) -> None:
        for root, run in sorted(touched):
            try:
                (outcome,) = update_provenance_in(
                    self._repo, ResourcePath(root, forceDirectory=True), runs=[run]
                )
                _LOG.info("%s", outcome.describe())
            except Exception as err:  # the datasets are in; a missing graph is made by the next update
                _LOG.error("Provenance graph of run %s not written: %s", run, err)
