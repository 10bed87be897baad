"""Retrying transfers that failed transiently, with exponential backoff and jitter.

Two layers retry HTTP transfers: `lsst.resources` retries single idempotent requests
on 429/5xx and connection errors (its ``LSST_HTTP_BACKOFF_MIN/MAX`` settings), and
this policy retries a whole transfer (fetch, upload or commit) that still failed
with a transient `TransferError`, for every stager.  Only this outer layer's retries
are counted in the report.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable

from stagers.base import TransferError

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient transfer failure is retried."""

    attempts: int = 4
    """Tries in all (1 = no retry)."""
    backoff: float = 2.0
    """Seconds before the first retry; doubled after each further failure."""
    max_backoff: float = 60.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), with ±25 % jitter."""
        base = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return base * random.uniform(0.75, 1.25)


class RetryCounter:
    """A thread-safe count of retries, shared by the transfers of one direction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


def with_retries[T](
    policy: RetryPolicy, what: str, action: Callable[[], T], counter: RetryCounter | None = None
) -> T:
    """Run ``action``; retry it on transient `TransferError` as ``policy`` allows.

    Raises
    ------
    TransferError
        A permanent failure at once, or the last transient one once the attempts
        are used up (its message then says how many attempts were made).
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except TransferError as err:
            if err.permanent:
                raise
            if attempt == policy.attempts:
                raise TransferError(f"{err} (gave up after {attempt} attempts)", permanent=False) from err
            wait = policy.delay(attempt)
            _LOG.warning(
                "%s failed (attempt %d of %d), retrying in %.1f s: %s",
                what,
                attempt,
                policy.attempts,
                wait,
                err,
            )
            if counter is not None:
                counter.add()
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
