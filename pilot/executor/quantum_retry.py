"""Which failed quanta the pilot runs again inside the job, and with how much memory.

The policy (no I/O; the engine asks it after every failure):

1. A quantum runs at most ``1 + execution.retries`` times in a job, counting attempts
   journaled by an earlier run of the bundle in the same workspace (``--resume``).
2. A dead worker (``pilot.WorkerDied``: a segfault, a kill from outside) or a hung one
   (``pilot.QuantumTimeout`` "hung") is tried again as it was.  A quantum over its time
   limit is not: it would only run out of time again.
3. A quantum over its memory budget (``pilot.MemoryLimitExceeded``) is tried again with
   its worker's budget times ``execution.memory_multiplier`` for each failed attempt, at
   most what the slot has (its memory over the budget, in budgets; at least the pool's
   workers).  While it runs with ``k`` budgets, as many other workers stay idle as the
   slot needs to hold it (``k − 1`` when the pool already fills the slot), so the pilot
   never uses more memory than its slot has.
4. A task's own exception is tried again only if it is transient: pipe_base's
   ``RepeatableQuantumError`` or a type named in ``execution.retry_exceptions``.
5. Never when the failure's pipetask exit code (the exception class's ``EXIT_CODE``, else
   1) is in the bundle's ``retries.retry_unless_exit`` (BPS's ``retryUnlessExit``).
6. Each failed attempt stays in the quantum's result (``attempts`` in ``report.json``)
   and in the journal; descendants wait for the last attempt.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Collection, Mapping

from ..report import QuantumAttempt, QuantumResult, attempt_of

REPEATABLE = "lsst.pipe.base._status.RepeatableQuantumError"
"""The stack's "try me again" exception (``lsst.pipe.base.RepeatableQuantumError``)."""


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """The bundle's in-job retry settings."""

    retries: int = 1
    memory_multiplier: float = 2.0
    transient_exceptions: frozenset[str] = frozenset()
    unless_exit: frozenset[int] = frozenset()
    pool_size: int = 1
    slot_budgets: int = 1
    """The slot's memory in worker budgets (at least ``pool_size``)."""


@dataclasses.dataclass(frozen=True)
class Retry:
    """Run the quantum again with its worker's memory budget times ``memory_factor``."""

    memory_factor: float = 1.0

    @property
    def workers(self) -> int:
        """Workers' worth of memory the retry takes (``k`` in rule 3)."""
        return max(1, math.ceil(self.memory_factor - 1e-9))


def decide(failure: QuantumResult, kind: str, attempts: int, settings: RetrySettings) -> Retry | None:
    """Rules 1–5 for a quantum that failed its ``attempts``-th time; None: it stays failed.

    ``kind`` is how it failed: ``task`` (its task raised), ``died``, ``memory``, ``hang``
    or ``timeout`` (the pool killed its worker).
    """
    if attempts > settings.retries:
        return None
    if failure.exit_code is not None and failure.exit_code in settings.unless_exit:
        return None
    match kind:
        case "died" | "hang":
            return Retry()
        case "memory":
            factor = min(
                settings.memory_multiplier**attempts, float(max(settings.slot_budgets, settings.pool_size))
            )
            return Retry(factor) if factor > 1 else None
        case "task" if _transient(failure.exception_type, settings.transient_exceptions):
            return Retry()
    return None


def _transient(exception_type: str | None, named: Collection[str]) -> bool:
    if exception_type is None:
        return False
    short = exception_type.rsplit(".", 1)[-1]
    return exception_type == REPEATABLE or short == "RepeatableQuantumError" or exception_type in named


class RetryBook:
    """One bundle's in-job retries: attempts so far, memory retries waiting, workers held idle."""

    def __init__(
        self, settings: RetrySettings, prior: Mapping[uuid.UUID, list[QuantumAttempt]] | None = None
    ) -> None:
        self.settings = settings
        self._attempts: dict[uuid.UUID, list[QuantumAttempt]] = {q: list(a) for q, a in (prior or {}).items()}
        self._factor: dict[uuid.UUID, float] = {}
        self.waiting: list[tuple[uuid.UUID, Retry]] = []
        """Memory retries waiting for enough idle workers (rule 3), oldest first."""
        self.held: dict[int, int] = {}
        """Workers kept idle for each worker running a memory retry, by its index."""

    def consider(self, failure: QuantumResult, kind: str) -> Retry | None:
        """Decide on a failed attempt; if it is to run again, keep the attempt and return how."""
        quantum_id = failure.quantum_id
        done = self._attempts.setdefault(quantum_id, [])
        retry = decide(failure, kind, len(done) + 1, self.settings)
        if retry is None:
            return None
        done.append(attempt_of(failure, self._factor.get(quantum_id, 1.0)))
        if retry.memory_factor > 1:
            self._factor[quantum_id] = retry.memory_factor
            self.waiting.append((quantum_id, retry))
        return retry

    def idle_for(self, retry: Retry) -> int:
        """Workers to keep idle while ``retry`` runs (rule 3)."""
        spare = max(0, self.settings.slot_budgets - self.settings.pool_size)
        return max(0, retry.workers - 1 - spare)

    def attempts(self, quantum_id: uuid.UUID) -> list[QuantumAttempt]:
        return list(self._attempts.get(quantum_id, ()))

    def tries(self, quantum_id: uuid.UUID) -> int:
        """Attempts made so far, the running one included."""
        return len(self._attempts.get(quantum_id, ())) + 1

    def capacity(self, pool_size: int) -> int:
        """Workers that may run quanta now: the pool minus those held idle for memory retries."""
        return pool_size - sum(self.held.values())
