"""What a bundle left committed in the staging area (read when its lease lapsed)."""

from __future__ import annotations

import dataclasses
import logging
import uuid

from lsst.resources import ResourcePath

from stagers.base import TransferError
from stagers.registry import stager_for

from ..errors import PluginNotFound
from ..report import BundleReport
from ..staging import area

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CommittedOutcome:
    """Quanta a committed stage-out accounts for."""

    succeeded: frozenset[uuid.UUID]
    failed: frozenset[uuid.UUID]
    causes: dict[uuid.UUID, FailureCause] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FailureCause:
    """Why a quantum of a committed report failed: its exception, or the quantum that blocked it."""

    exception_type: str | None
    blocked_by: uuid.UUID | None


def is_committed(bundle_dir: ResourcePath) -> bool:
    """Say whether the bundle's ``manifest.json`` exists."""
    try:
        return area.committed_manifest(bundle_dir) is not None
    except (TransferError, PluginNotFound) as err:
        _LOG.warning("Cannot check %s for a committed manifest: %s", bundle_dir, err)
        return False


def committed_outcome(bundle_dir: ResourcePath) -> CommittedOutcome | None:
    """Read the committed manifest and its report; None if nothing was committed.

    Blocked quanta count as failed (they cannot run before their failed producer is
    fixed); ``not_run`` quanta are unfinished.
    """
    try:
        manifest = area.committed_manifest(bundle_dir)
        if manifest is None:
            return None
        report_text = stager_for(bundle_dir).read(bundle_dir.join(manifest.report))
        report = BundleReport.model_validate_json(report_text)
    except Exception as err:  # an unreadable commit is treated as no commit: everything re-runs
        _LOG.warning("Cannot read the committed stage-out in %s: %s", bundle_dir, err)
        return None
    succeeded = frozenset(q.quantum_id for q in report.quanta if q.status == "succeeded")
    failed = [q for q in report.quanta if q.status in ("failed", "blocked")]
    causes = {q.quantum_id: FailureCause(q.exception_type, q.blocked_by) for q in failed}
    return CommittedOutcome(succeeded, frozenset(causes), causes)
