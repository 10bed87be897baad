"""The bundle journal: an append-only record of finished quanta in a workspace.

One JSON object per line, appended by the pilot (never by a worker) as each quantum
finishes, and flushed to the OS before the pilot moves on, so a pilot that dies
loses nothing.  A later ``pilot run`` of the same bundle in the same workspace
(``--resume``, or a re-claim in glidein mode) reads it and does not run succeeded
quanta again: their outputs are in the workspace's datastore.  A torn last line
(the pilot was killed while writing it) is ignored.

The file is fsynced at most once per `SYNC_INTERVAL` seconds, not after every line.
The pilot appends a line between a worker's end of one quantum and the dispatch of
its next, so an fsync there (0.5 ms on an idle disk, 4 ms and more on a busy one)
was paid by every quantum.  What a sync per line protected against is a crash of
the machine itself, and there it did not hold anyway: the outputs a journaled
quantum wrote are not fsynced (the stack's datastore does not), so a line that
survived could vouch for files that did not.  Now such a crash loses at most the
last interval's lines, whose quanta run again on resume.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

from .report import QuantumAttempt, QuantumResult, attempt_of

_LOG = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"

SYNC_INTERVAL = 1.0
"""Seconds at least between two fsyncs of a journal (see the module docstring)."""


class Journal:
    """Appends quantum results to ``<workspace>/journal.jsonl`` and reads them back."""

    def __init__(self, path: Path, sync_interval: float = SYNC_INTERVAL) -> None:
        self.path = path
        self.sync_interval = sync_interval
        self._lock = threading.Lock()
        self._synced_at = -math.inf

    def exists(self) -> bool:
        """Whether an earlier run left a journal here."""
        return self.path.exists()

    def record(self, result: QuantumResult, event: str = "finished") -> None:
        """Append ``result`` and flush it to the OS; fsync if the last fsync is `sync_interval` s old.

        ``event`` is ``finished``, or ``attempt`` for a failed attempt the pilot runs again.
        """
        line = json.dumps({"event": event, "result": result.model_dump(mode="json")}) + "\n"
        with self._lock, open(self.path, "a+b") as stream:
            # After a torn last line (a pilot killed mid-write) start a fresh line, or this
            # record would be glued to the fragment and ignored with it.
            if stream.tell() > 0:
                stream.seek(-1, io.SEEK_END)
                if stream.read(1) != b"\n":
                    line = "\n" + line
            stream.write(line.encode())
            stream.flush()
            now = time.monotonic()
            if now - self._synced_at >= self.sync_interval:
                os.fsync(stream.fileno())  # syncs the lines appended since the last one too
                self._synced_at = now

    def record_attempt(self, result: QuantumResult) -> None:
        """Append a failed attempt that the pilot runs again (counted on ``--resume``)."""
        self.record(result, "attempt")

    def _entries(self) -> list[tuple[str, QuantumResult]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                entries.append(
                    (str(entry.get("event", "finished")), QuantumResult.model_validate(entry["result"]))
                )
            except (ValueError, KeyError) as err:
                _LOG.warning("Ignoring unreadable line %d of %s: %s", number, self.path, err)
        return entries

    def succeeded(self) -> dict[uuid.UUID, QuantumResult]:
        """The latest result of every quantum whose latest journaled outcome is success."""
        latest = {result.quantum_id: result for _, result in self._entries()}
        return {q: r for q, r in latest.items() if r.status == "succeeded"}

    def attempts(self) -> dict[uuid.UUID, list[QuantumAttempt]]:
        """Failed attempts journaled per quantum, retried ones and final failures alike (for retries)."""
        out: dict[uuid.UUID, list[QuantumAttempt]] = {}
        for _, result in self._entries():
            if result.status == "failed":
                out.setdefault(result.quantum_id, []).append(attempt_of(result))
        return out


def quanta_to_skip(
    qg: PredictedQuantumGraph,
    order: Iterable[uuid.UUID],
    succeeded: Iterable[uuid.UUID],
    transient: Iterable[str],
) -> set[uuid.UUID]:
    """Journaled successes that need not run again.

    A success is run again if it produced a transient (never written) dataset that
    a quantum still to run consumes: only a rerun can hand that dataset on.
    """
    members = set(order)
    skip = set(succeeded) & members
    transient_types = set(transient)
    if not transient_types:
        return skip
    bipartite = qg.bipartite_xgraph
    changed = True
    while changed:
        changed = False
        for producer in sorted(skip, key=str):
            for dataset_id in bipartite.successors(producer):
                if bipartite.nodes[dataset_id]["dataset_type_name"] not in transient_types:
                    continue
                if any(c in members and c not in skip for c in bipartite.successors(dataset_id)):
                    skip.discard(producer)
                    changed = True
                    break
    return skip
