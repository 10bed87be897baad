"""A quantum over its time limit, or whose worker hangs, fails alone; its worker is replaced.

Real workers, real signals: a mock task that SIGSTOPs its own worker process (what a process
stuck in the kernel or stopped by a tracer looks like), and tasks sleeping past a limit.
"""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import TaskSpec, make_campaign, pilot, read_report

from pilot.exit_codes import ExitCode


def _by_key(report: dict) -> dict[tuple[str, int], dict]:
    return {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}


def test_a_stopped_worker_fails_its_quantum_as_hung(tmp_path: Path) -> None:
    chain = (
        TaskSpec("t0", "raw", "mid", fail_condition="detector = 2", fail_signal=signal.SIGSTOP),
        TaskSpec("t1", "mid", "final"),
    )
    camp = make_campaign(tmp_path, chain, n_detectors=4)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    result = pilot("run", bundle, "--workspace", workspace, "--processes", "2", "--hang-seconds", "2")
    assert result.returncode == ExitCode.QUANTA_FAILED, result.stderr
    report = read_report(workspace)
    assert report["counts"] == {"succeeded": 6, "failed": 1, "blocked": 1, "not_run": 0}
    assert report["workers_replaced"] == 2  # a hang may pass: it is tried once more (and hangs again)
    hung = _by_key(report)["t0", 2]
    assert [a["exception_type"] for a in hung["attempts"]] == ["pilot.QuantumTimeout"]
    assert hung["exception_type"] == "pilot.QuantumTimeout"
    assert hung["exception_message"].startswith("hung: no CPU progress for ")
    assert "while the worker was stopped" in hung["exception_message"]
    assert _by_key(report)["t1", 2]["blocked_by"] == hung["quantum_id"]
    assert report["stage_out"] is not None  # the six that succeeded were staged
    assert pilot("ingest", camp.repo).returncode == 0
    finals = [d for name, d in camp.datasets_in_run() if name == "final"]
    assert len(finals) == 3


def test_a_quantum_over_its_time_limit_fails_and_the_rest_runs(tmp_path: Path) -> None:
    chain = (TaskSpec("t0", "raw", "mid"), TaskSpec("t1", "mid", "final", sleep=600.0))
    camp = make_campaign(tmp_path, chain, n_detectors=2)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    result = pilot("run", bundle, "--workspace", workspace, "--processes", "2", "--quantum-timeout", "3")
    assert result.returncode == ExitCode.QUANTA_FAILED, result.stderr
    report = read_report(workspace)
    assert report["counts"] == {"succeeded": 2, "failed": 2, "blocked": 0, "not_run": 0}
    for detector in (0, 1):
        slow = _by_key(report)["t1", detector]
        assert slow["exception_type"] == "pilot.QuantumTimeout"
        assert "over its limit of 3 s" in slow["exception_message"]
