"""A real SIGTERM to a real ``pilot run``: finished quanta are staged and reported."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Campaign, TaskSpec, make_campaign, pilot, read_report

from pilot.exit_codes import ExitCode

SLOW_CHAIN = (TaskSpec("a", "raw", "x", sleep=1.0), TaskSpec("b", "x", "y", sleep=1.0))


def _start_and_wait_for(
    tmp_path: Path, chain: tuple[TaskSpec, ...], log_dir: str, *options: str
) -> tuple[subprocess.Popen[str], Path, Campaign]:
    """Start ``pilot run`` on a 4-detector bundle of ``chain``; return once ``log_dir`` has a log."""
    camp = make_campaign(tmp_path, chain, n_detectors=4)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pilot.cli", "run", str(bundle), "--workspace", str(workspace), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    logs = workspace / bundle.stem / "repo" / "test" / "run1" / log_dir  # a quantum writes its log last
    deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
    while not (logs.exists() and any(logs.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {log_dir} was ever written"
        time.sleep(0.05)
    return proc, workspace, camp


@pytest.mark.parametrize("processes", [(), ("--processes", "0")], ids=["pool", "in-process"])
def test_sigterm_keeps_finished_work(tmp_path: Path, processes: tuple[str, ...]) -> None:
    """Both engines' modes: a running quantum finishes within the grace period and is staged."""
    proc, workspace, camp = _start_and_wait_for(tmp_path, SLOW_CHAIN, "b_log", *processes)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr

    report = read_report(workspace)
    assert report["status"] == "interrupted"
    done = [q for q in report["quanta"] if q["status"] == "succeeded"]
    not_run = [q for q in report["quanta"] if q["status"] == "not_run"]
    assert len(done) >= 2 and len(done) + len(not_run) == 8
    assert {q["caveat"] for q in not_run} == {"interrupted: received SIGTERM"}
    assert report["stage_out"]["n_datasets"] == 3 * len(done)

    assert pilot("ingest", camp.repo).returncode == 0
    registered = [name for name, _ in camp.datasets_in_run()]
    assert registered.count("b_metadata") == sum(q["task_label"] == "b" for q in done)


HANGING_CHAIN = (TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y", sleep=600.0))


@pytest.mark.parametrize(
    ("processes", "cut_short"),
    [(("--processes", "1"), "killed"), (("--processes", "0"), "abandoned")],
    ids=["pool", "in-process"],
)
def test_grace_period_ends_a_running_quantum(
    tmp_path: Path, processes: tuple[str, ...], cut_short: str
) -> None:
    """A quantum still running when the grace period ends is cut short; what finished is staged."""
    proc, workspace, camp = _start_and_wait_for(tmp_path, HANGING_CHAIN, "a_log", "--grace", "1", *processes)
    proc.send_signal(signal.SIGTERM)  # the first b (600 s) is running now
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr

    report = read_report(workspace)
    assert report["status"] == "interrupted"
    by_status: dict[str, list[dict]] = {}
    for quantum in report["quanta"]:
        by_status.setdefault(quantum["status"], []).append(quantum)
    assert [q["task_label"] for q in by_status["succeeded"]] == ["a"]
    (running,) = [q for q in by_status["not_run"] if q["caveat"] != "interrupted: received SIGTERM"]
    assert running["task_label"] == "b"
    assert running["caveat"] == f"interrupted: received SIGTERM; {cut_short} after the 1 s grace period"
    assert len(by_status["not_run"]) == 7
    assert report["stage_out"]["n_datasets"] == 3  # a's output, metadata and log

    assert pilot("ingest", camp.repo).returncode == 0
    init_outputs = ("_config", "packages")
    registered = sorted(name for name, _ in camp.datasets_in_run() if not name.endswith(init_outputs))
    assert registered == ["a_log", "a_metadata", "x"]
