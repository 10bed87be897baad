"""A real SIGTERM to a real ``pilot run``: finished quanta are staged and reported."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TaskSpec, make_campaign, pilot, read_report

from pilot.exit_codes import ExitCode

SLOW_CHAIN = (TaskSpec("a", "raw", "x", sleep=1.0), TaskSpec("b", "x", "y", sleep=1.0))


def test_sigterm_keeps_finished_work(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, SLOW_CHAIN, n_detectors=4)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pilot.cli", "run", str(bundle), "--workspace", str(workspace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_chain_done = (
        workspace / bundle.stem / "repo" / "test" / "run1" / "b_log"
    )  # a quantum writes its log last
    deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
    while not (first_chain_done.exists() and any(first_chain_done.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first chain never finished"
        time.sleep(0.05)
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
