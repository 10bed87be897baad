"""Request errors the scheduler answers with a 4xx status.

They belong to the pilot's error taxonomy (`pilot.errors`) and are shared with the
client: the scheduler raises one and answers with its ``status``; the client raises
`~pilot.errors.SchedulerRejected` (exit 20), or `~pilot.errors.LeaseGone` for a lost
lease, on such an answer.
"""

from __future__ import annotations

from ..errors import LeaseGone, SchedulerRejected

__all__ = ["LeaseGone", "LeaseNotFound", "RequestError"]

RequestError = SchedulerRejected
"""A request the scheduler refuses; ``status`` (400 unless a subclass says otherwise) is the answer's."""


class LeaseNotFound(LeaseGone):
    """No such lease was ever handed out."""

    status = 404
