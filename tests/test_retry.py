"""Retries of transient transfer failures: attempts, counting, permanent errors, backoff.

The waits are recorded, never slept: ``pilot.staging.retry``'s ``time`` (and, where
the exact delay matters, its ``random``) are replaced for the test.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable

import pytest

import pilot.staging.retry as retry_module
from pilot.staging.retry import RetryCounter, RetryPolicy, with_retries
from stagers.base import TransferError


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the waits of `with_retries` instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(retry_module, "time", types.SimpleNamespace(sleep=recorded.append))
    return recorded


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the jitter factor exactly 1 (the middle of its range)."""
    monkeypatch.setattr(retry_module, "random", types.SimpleNamespace(uniform=lambda a, b: (a + b) / 2))


def failing(failures: list[TransferError], value: str = "done") -> tuple[Callable[[], str], list[int]]:
    """An action raising ``failures`` one per call, then returning ``value``; and its call count."""
    calls = [0]

    def action() -> str:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return value

    return action, calls


def transient(n: int) -> list[TransferError]:
    return [TransferError(f"reset #{i}", permanent=False) for i in range(1, n + 1)]


def test_success_at_first_try_neither_retries_nor_waits(sleeps: list[float]) -> None:
    action, calls = failing([])
    counter = RetryCounter()
    assert with_retries(RetryPolicy(attempts=3), "fetch", action, counter) == "done"
    assert calls == [1]
    assert counter.count == 0
    assert sleeps == []


@pytest.mark.parametrize("k", [1, 2, 3])
def test_success_after_k_transient_failures_returns_the_value(k: int, sleeps: list[float]) -> None:
    action, calls = failing(transient(k), value="payload")
    counter = RetryCounter()
    assert with_retries(RetryPolicy(attempts=4, backoff=0.5), "fetch", action, counter) == "payload"
    assert calls == [k + 1]
    assert counter.count == k
    assert len(sleeps) == k


def test_transient_errors_retried_up_to_the_attempt_limit(sleeps: list[float]) -> None:
    action, calls = failing(transient(10))
    counter = RetryCounter()
    with pytest.raises(TransferError) as raised:
        with_retries(RetryPolicy(attempts=4), "upload of x", action, counter)
    assert calls == [4]
    assert counter.count == 3  # retries, not attempts
    assert len(sleeps) == 3
    error = raised.value
    assert not error.permanent
    assert "reset #4" in str(error) and "gave up after 4 attempts" in str(error)
    assert isinstance(error.__cause__, TransferError) and str(error.__cause__) == "reset #4"


def test_single_attempt_policy_never_retries(sleeps: list[float]) -> None:
    action, calls = failing(transient(1))
    counter = RetryCounter()
    with pytest.raises(TransferError, match=r"gave up after 1 attempts"):
        with_retries(RetryPolicy(attempts=1), "fetch", action, counter)
    assert calls == [1]
    assert counter.count == 0
    assert sleeps == []


def test_permanent_error_is_raised_at_once(sleeps: list[float]) -> None:
    missing = TransferError("s3://dbb/raw.fits does not exist", permanent=True)
    action, calls = failing([missing])
    counter = RetryCounter()
    with pytest.raises(TransferError) as raised:
        with_retries(RetryPolicy(attempts=5), "fetch", action, counter)
    assert raised.value is missing  # unchanged: no "gave up" suffix
    assert calls == [1]
    assert counter.count == 0
    assert sleeps == []


def test_permanent_error_after_transient_ones_stops_retrying(sleeps: list[float]) -> None:
    action, calls = failing([*transient(2), TransferError("403", permanent=True)])
    counter = RetryCounter()
    with pytest.raises(TransferError, match="^403$"):
        with_retries(RetryPolicy(attempts=10), "fetch", action, counter)
    assert calls == [3]
    assert counter.count == 2


def test_other_exceptions_are_not_retried(sleeps: list[float]) -> None:
    calls = [0]

    def broken() -> None:
        calls[0] += 1
        raise ValueError("a bug, not a transfer failure")

    with pytest.raises(ValueError):
        with_retries(RetryPolicy(attempts=5), "fetch", broken)
    assert calls == [1]
    assert sleeps == []


def test_counter_is_optional(sleeps: list[float]) -> None:
    action, calls = failing(transient(2))
    assert with_retries(RetryPolicy(attempts=3), "fetch", action) == "done"
    assert calls == [3]


def test_waits_double_from_the_initial_backoff(sleeps: list[float], no_jitter: None) -> None:
    action, _ = failing(transient(5))
    with_retries(RetryPolicy(attempts=6, backoff=0.25, max_backoff=100.0), "fetch", action)
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_waits_are_capped_at_max_backoff(sleeps: list[float], no_jitter: None) -> None:
    action, _ = failing(transient(5))
    with_retries(RetryPolicy(attempts=6, backoff=1.0, max_backoff=3.0), "fetch", action)
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("retry", [1, 2, 3, 6, 10])
def test_jitter_stays_within_a_quarter_of_the_base_delay(retry: int) -> None:
    policy = RetryPolicy(backoff=2.0, max_backoff=60.0)
    base = min(60.0, 2.0 * 2 ** (retry - 1))
    delays = [policy.delay(retry) for _ in range(500)]
    assert all(0.75 * base <= delay <= 1.25 * base for delay in delays)
    assert len(set(delays)) > 1  # jittered, not constant


def test_jitter_bounds_are_the_extremes_of_the_random_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(backoff=4.0)
    monkeypatch.setattr(retry_module, "random", types.SimpleNamespace(uniform=lambda a, b: a))
    assert policy.delay(2) == pytest.approx(6.0)
    monkeypatch.setattr(retry_module, "random", types.SimpleNamespace(uniform=lambda a, b: b))
    assert policy.delay(2) == pytest.approx(10.0)


def test_counter_counts_across_threads() -> None:
    counter = RetryCounter()

    def add_many() -> None:
        for _ in range(1000):
            counter.add()

    threads = [threading.Thread(target=add_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.count == 4000
