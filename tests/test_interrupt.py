"""A real SIGTERM to a real ``pilot run``: finished quanta are staged and reported."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Campaign, TaskSpec, make_campaign, pilot, read_report

from pilot.exit_codes import ExitCode

SLOW_CHAIN = (TaskSpec("a", "raw", "x", sleep=1.0), TaskSpec("b", "x", "y", sleep=1.0))


@dataclasses.dataclass
class _Run:
    """A ``pilot run`` in the background; its stderr goes to a file (an unread pipe could block it)."""

    proc: subprocess.Popen[str]
    workspace: Path
    repo_run: Path
    stderr: Path
    camp: Campaign

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
        while not condition():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, f"{what} never happened"
            time.sleep(0.05)

    def has_log(self, label: str) -> bool:
        """Whether a quantum of ``label`` finished (a quantum writes its log last)."""
        logs = self.repo_run / f"{label}_log"
        return logs.exists() and any(logs.iterdir())

    def finish(self) -> str:
        self.proc.wait(timeout=120)
        return self.stderr.read_text()


def _start(tmp_path: Path, chain: tuple[TaskSpec, ...], *options: str, log_level: str = "WARNING") -> _Run:
    """Start ``pilot run`` on a 4-detector bundle of ``chain``."""
    camp = make_campaign(tmp_path, chain, n_detectors=4)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    stderr = tmp_path / "stderr.log"
    with open(stderr, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pilot.cli", "--log-level", log_level, "run", str(bundle)]
            + ["--workspace", str(workspace), *options],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    return _Run(proc, workspace, workspace / bundle.stem / "repo" / "test" / "run1", stderr, camp)


@pytest.mark.parametrize("processes", [(), ("--processes", "0")], ids=["pool", "in-process"])
def test_sigterm_keeps_finished_work(tmp_path: Path, processes: tuple[str, ...]) -> None:
    """Both engines' modes: a running quantum finishes within the grace period and is staged."""
    run = _start(tmp_path, SLOW_CHAIN, *processes)
    run.wait_for(lambda: run.has_log("b"), "the first chain's end")
    run.proc.send_signal(signal.SIGTERM)
    stderr = run.finish()
    assert run.proc.returncode == ExitCode.INTERRUPTED, stderr
    camp = run.camp

    report = read_report(run.workspace)
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
    run = _start(tmp_path, HANGING_CHAIN, "--grace", "1", *processes, log_level="INFO")
    run.wait_for(lambda: "Mocking execution of task 'b'" in run.stderr.read_text(), "the first b's start")
    run.proc.send_signal(signal.SIGTERM)  # the first b (600 s) is running now
    stderr = run.finish()
    assert run.proc.returncode == ExitCode.INTERRUPTED, stderr
    camp = run.camp

    report = read_report(run.workspace)
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
