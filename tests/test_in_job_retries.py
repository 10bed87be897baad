"""Retries inside the job: what fails in a way that may pass runs again, the rest stays failed.

Real workers and the project's PayloadTask: a quantum that allocates past its worker's
memory budget, and one whose task raises a (configured) transient exception once.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

from conftest import payload_campaign, pilot, read_report

from pilot.executor.quantum_retry import Retry, RetryBook, RetrySettings, decide
from pilot.exit_codes import ExitCode
from pilot.report import QuantumResult

MiB = 1024 * 1024


def _by_key(report: dict) -> dict[tuple[str, int], dict]:
    return {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}


def _set_execution(bundle: Path, **settings: object) -> None:
    document = json.loads(bundle.read_text())
    document["execution"].update(settings)
    bundle.write_text(json.dumps(document))


def test_a_quantum_over_its_memory_budget_succeeds_with_a_bigger_one(tmp_path: Path) -> None:
    def configure(index: int, config) -> None:  # type: ignore[no-untyped-def]
        config.allocate_bytes = 400 * MiB if index == 1 else 0
        config.sleep = 1.0 if index == 1 else 0.0  # hold it while the memory watch looks

    camp = payload_campaign(tmp_path, 2, "probe/run", configure)
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    # Workers idle at ~250 MiB: t0 fits in 500 MiB, t1 (+400 MiB) only in twice that.
    result = pilot(
        "run", bundle, "--workspace", workspace, "--processes", "2", "--memory-per-worker", "500MiB"
    )
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    report = read_report(workspace)
    assert report["counts"] == {"succeeded": 4, "failed": 0, "blocked": 0, "not_run": 0}
    for detector in (0, 1):
        big = _by_key(report)["t1", detector]
        (first,) = big["attempts"]
        assert first["exception_type"] == "pilot.MemoryLimitExceeded" and first["memory_factor"] == 1.0
        assert big["max_rss_bytes"] > 500 * MiB  # the retry used more than one budget
        assert not _by_key(report)["t0", detector]["attempts"]
    journal = [
        json.loads(line) for line in (workspace / bundle.stem / "journal.jsonl").read_text().splitlines()
    ]
    assert [entry["event"] for entry in journal].count("attempt") == 2


def test_a_transient_task_exception_is_retried_only_when_configured(tmp_path: Path) -> None:
    fail_counts = tmp_path / "fail-counts"
    fail_counts.mkdir()

    def configure(index: int, config) -> None:  # type: ignore[no-untyped-def]
        if index == 0:
            config.fail_count_file = str(fail_counts / "{detector}")

    runs = {}
    for name, settings in {
        "plain": {},  # RuntimeError is not transient: no retry
        "configured": {"retry_exceptions": ["builtins.RuntimeError"]},
    }.items():
        camp = payload_campaign(tmp_path / f"camp-{name}", 2, "probe/run", configure)
        (bundle,) = camp.bundle_files()
        (fail_counts / "1").write_text("1\n")  # detector 1's t0 fails once
        _set_execution(bundle, **settings)
        workspace = tmp_path / name
        result = pilot("run", bundle, "--workspace", workspace, "--processes", "1")
        assert result.returncode in (0, 10), result.stderr
        runs[name] = (result.returncode, read_report(workspace))
    code, plain = runs["plain"]
    assert code == ExitCode.QUANTA_FAILED
    failed = _by_key(plain)["t0", 1]
    assert (failed["status"], failed["exit_code"], failed["attempts"]) == ("failed", 1, [])
    code, configured = runs["configured"]
    assert code == ExitCode.SUCCESS
    retried = _by_key(configured)["t0", 1]
    assert retried["status"] == "succeeded"
    assert [a["exception_type"] for a in retried["attempts"]] == ["builtins.RuntimeError"]


def _failure(exception_type: str, exit_code: int | None = None) -> QuantumResult:
    return QuantumResult(
        quantum_id=uuid.uuid4(),
        task_label="t",
        data_id={},
        status="failed",
        exception_type=exception_type,
        exit_code=exit_code,
    )


def test_the_retry_policy_by_failure_kind() -> None:
    settings = RetrySettings(
        retries=2, memory_multiplier=2.0, pool_size=4, slot_budgets=4, unless_exit=frozenset({1})
    )
    assert decide(_failure("pilot.WorkerDied"), "died", 1, settings) == Retry()
    assert decide(_failure("pilot.QuantumTimeout"), "hang", 1, settings) == Retry()
    assert decide(_failure("pilot.QuantumTimeout"), "timeout", 1, settings) is None  # would time out again
    assert decide(_failure("pilot.WorkerDied"), "died", 3, settings) is None  # retries used up
    assert decide(_failure("pilot.MemoryLimitExceeded"), "memory", 1, settings) == Retry(2.0)
    assert decide(_failure("pilot.MemoryLimitExceeded"), "memory", 2, settings) == Retry(4.0)
    repeatable = _failure("lsst.pipe.base._status.RepeatableQuantumError", exit_code=20)
    assert decide(repeatable, "task", 1, settings) == Retry()
    assert decide(_failure("builtins.ValueError", exit_code=1), "task", 1, settings) is None
    # A configured transient type whose exit code retry_unless_exit names stays failed.
    configured = dataclasses.replace(settings, transient_exceptions=frozenset({"builtins.OSError"}))
    assert decide(_failure("builtins.OSError", exit_code=1), "task", 1, configured) is None
    assert (
        decide(
            _failure("builtins.OSError", exit_code=1),
            "task",
            1,
            dataclasses.replace(configured, unless_exit=frozenset()),
        )
        == Retry()
    )


def test_a_memory_retry_keeps_workers_idle_when_the_slot_needs_it() -> None:
    full = RetryBook(RetrySettings(retries=3, pool_size=4, slot_budgets=4))  # the pool fills the slot
    roomy = RetryBook(RetrySettings(retries=3, pool_size=4, slot_budgets=16))
    for book, idle in ((full, [1, 3]), (roomy, [0, 0])):
        failure = _failure("pilot.MemoryLimitExceeded")
        first = book.consider(failure, "memory")
        second = book.consider(failure, "memory")
        assert first is not None and second is not None
        assert [book.idle_for(first), book.idle_for(second)] == idle  # 2 budgets, then 4
        assert [q for q, _ in book.waiting] == [failure.quantum_id] * 2
        assert len(book.attempts(failure.quantum_id)) == 2 and book.tries(failure.quantum_id) == 3
