"""Which failed quanta the scheduler tries again, and with how much memory.

The policy, applied when a lease ends (no I/O here: the caller reads the bundle and
its committed report):

1. A release (a drain) is not the bundle's fault: it counts no attempt, and what failed
   in it stays failed (retrying it could loop forever).  A report or a lapsed lease
   counts one attempt of every quantum in the bundle.
2. While attempts are left (``retries.max_attempts`` of the bundle, else ``pilot serve
   --max-attempts``), failed quanta and the quanta they blocked are re-queued, except:
3. With ``1`` in ``retries.retry_unless_exit`` (pipetask's "a task failed", as BPS's
   default ``retryUnlessExit: [1, 2]`` says), a quantum whose task raised is final, and so
   is every quantum it blocked.  Failures of the pilot's making (``pilot.*``: the memory
   limit, a dead worker) and failures of unknown cause (nothing committed) are retried.
4. A retry after a ``pilot.MemoryLimitExceeded`` gets the bundle's memory budgets times
   ``retries.memory_multiplier`` (BPS's ``memoryMultiplier``), when the bundle gives one.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Set

from ..bundle_model import RetryPolicy
from .outcome import FailureCause

TASK_FAILED = 1  # the pipetask exit code meaning "a quantum's task raised"
MEMORY_FAILURE = "pilot.MemoryLimitExceeded"


@dataclasses.dataclass(frozen=True)
class RetryDecision:
    """What to re-queue of the failed quanta, and the memory factor of the retry."""

    retried: frozenset[uuid.UUID]
    memory_factor: float = 1.0


def decide(
    policy: RetryPolicy,
    failed: Set[uuid.UUID],
    causes: Mapping[uuid.UUID, FailureCause],
    *,
    counted: bool,
    tries_left: bool,
) -> RetryDecision:
    """Apply the policy to the ``failed`` quanta of a bundle (``causes`` as committed)."""
    if not (counted and tries_left) or not failed:
        return RetryDecision(frozenset())
    final: set[uuid.UUID] = set()
    if TASK_FAILED in policy.retry_unless_exit:
        final = {q for q in failed if _raised_by_task(causes.get(q))}
        final |= {q for q in failed if _blocked_by_any(q, final, causes)}
    retried = frozenset(failed - final)
    memory = any((cause := causes.get(q)) and cause.exception_type == MEMORY_FAILURE for q in retried)
    factor = policy.memory_multiplier if memory and policy.memory_multiplier else 1.0
    return RetryDecision(retried, factor)


def _raised_by_task(cause: FailureCause | None) -> bool:
    if cause is None or cause.exception_type is None:
        return False  # blocked, or unknown: not the task's own failure
    return not cause.exception_type.startswith("pilot.")


def _blocked_by_any(
    quantum: uuid.UUID, final: Set[uuid.UUID], causes: Mapping[uuid.UUID, FailureCause]
) -> bool:
    """Follow ``blocked_by`` links from ``quantum``: does one reach a final failure?"""
    seen: set[uuid.UUID] = set()
    current: uuid.UUID | None = quantum
    while current is not None and current not in seen:
        seen.add(current)
        cause = causes.get(current)
        current = cause.blocked_by if cause else None
        if current in final:
            return True
    return False
