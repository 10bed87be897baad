"""Retries inside the job: what fails in a way that may pass runs again, the rest stays failed.

Real workers and the project's PayloadTask: a quantum that allocates past its worker's
memory budget, and one whose task raises a (configured) transient exception once.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import payload_campaign, pilot, read_report

from pilot.exit_codes import ExitCode

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
