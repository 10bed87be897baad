"""A real SIGTERM to a real ``pilot run``: finished quanta are staged and reported."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import TaskSpec, pilot, read_report, start_run

from pilot.exit_codes import ExitCode
from pilot.interruption import StopRequest

SLOW_CHAIN = (TaskSpec("a", "raw", "x", sleep=1.0), TaskSpec("b", "x", "y", sleep=1.0))


@pytest.mark.parametrize("processes", [(), ("--processes", "0")], ids=["pool", "in-process"])
def test_sigterm_keeps_finished_work(tmp_path: Path, processes: tuple[str, ...]) -> None:
    """Both engines' modes: a running quantum finishes within the grace period and is staged."""
    run = start_run(tmp_path, SLOW_CHAIN, *processes)
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
    run = start_run(tmp_path, HANGING_CHAIN, "--grace", "1", *processes, log_level="INFO")
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


def test_a_signal_during_another_stop_is_not_lost() -> None:
    """A SIGTERM while the pilot stops a bundle whose lease was withdrawn must still drain it."""
    stop = StopRequest(grace=5)
    stop.request("the scheduler withdrew the lease")
    stop.handle(signal.SIGTERM, None)
    assert stop.reason == "the scheduler withdrew the lease"  # the first reason wins for this bundle
    stop.clear()  # that bundle is given up; the next step of the pilot sees the signal
    assert stop.reason == "received SIGTERM" and stop.deadline is not None
    stop.clear()
    assert stop.reason is None
