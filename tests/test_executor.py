"""The warm-worker executor: depth-first order, in-memory chaining, isolation of crashes and memory."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from conftest import TaskSpec, make_campaign, payload_campaign, pilot, read_report

from pilot.demo.probe_tasks import PayloadConfig
from pilot.exit_codes import ExitCode

CHAIN = (TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y"), TaskSpec("c", "y", "z"))


def _run_one_bundle(root: Path, tasks: tuple[TaskSpec, ...], *run_args: str, n: int = 6) -> tuple[int, dict]:
    camp = make_campaign(root, tasks, n_detectors=n)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    result = pilot("run", bundle, "--workspace", root / "ws", *run_args)
    return result.returncode, read_report(root / "ws")


def test_chains_run_depth_first_on_each_worker(tmp_path: Path) -> None:
    code, report = _run_one_bundle(tmp_path, CHAIN, "--processes", "2", n=8)
    assert code == ExitCode.SUCCESS
    assert report["processes"] == 2
    by_worker: dict[int, list[dict]] = {}
    for quantum in report["quanta"]:
        by_worker.setdefault(quantum["worker"], []).append(quantum)
    assert set(by_worker) == {0, 1}
    for quanta in by_worker.values():
        quanta.sort(key=lambda q: datetime.fromisoformat(q["started_at"]))
        # Back to back: a, b, c of one detector, then the next detector's chain.
        labels = [q["task_label"] for q in quanta]
        assert labels == ["a", "b", "c"] * (len(quanta) // 3)
        for i in range(0, len(quanta), 3):
            assert len({q["data_id"]["detector"] for q in quanta[i : i + 3]}) == 1
        for earlier, later in zip(quanta, quanta[1:], strict=False):
            assert datetime.fromisoformat(earlier["ended_at"]) <= datetime.fromisoformat(later["started_at"])
    # Every intermediate (x and y of each detector) was handed over in memory, none read back.
    assert report["io"]["datasets_handed_in_memory"] == 16
    assert report["io"]["intermediate_bytes_read"] == 0


def test_worker_killed_by_signal_loses_only_its_quantum(tmp_path: Path) -> None:
    tasks = (
        TaskSpec("a", "raw", "x"),
        TaskSpec("b", "x", "y", fail_condition="detector = 3", fail_signal=9),
        TaskSpec("c", "y", "z"),
    )
    code, report = _run_one_bundle(tmp_path, tasks, "--processes", "2")
    assert code == ExitCode.QUANTA_FAILED
    by_key = {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}
    killed = by_key["b", 3]
    assert killed["status"] == "failed"
    assert killed["exception_type"] == "pilot.WorkerDied"
    assert "SIGKILL" in killed["exception_message"]
    assert by_key["c", 3]["status"] == "blocked" and by_key["c", 3]["blocked_by"] == killed["quantum_id"]
    assert report["counts"] == {"succeeded": 16, "failed": 1, "blocked": 1, "not_run": 0}
    # A dead worker's quantum is tried once more (execution.retries = 1): it kills its worker again.
    assert [a["exception_type"] for a in killed["attempts"]] == ["pilot.WorkerDied"]
    assert report["workers_replaced"] == 2


def test_raised_exception_fails_quantum_in_worker(tmp_path: Path) -> None:
    tasks = (TaskSpec("a", "raw", "x", fail_condition="detector = 1"), TaskSpec("b", "x", "y"))
    code, report = _run_one_bundle(tmp_path, tasks, "--processes", "2", n=4)
    assert code == ExitCode.QUANTA_FAILED
    by_key = {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}
    assert by_key["a", 1]["status"] == "failed" and by_key["a", 1]["exception_type"] == "builtins.ValueError"
    assert by_key["b", 1]["status"] == "blocked"
    assert report["workers_replaced"] == 0
    assert report["counts"]["succeeded"] == 6


def _payload_campaign(root: Path, allocate: dict[int, int], n: int = 3, sleep: float = 0.0) -> Path:
    """A DBB with NumpyArray raws and a 2-task PayloadTask chain; returns the bundle file."""

    def configure(index: int, config: PayloadConfig) -> None:
        config.payload_bytes = 1024
        config.allocate_bytes = allocate.get(index, 0)
        config.sleep = sleep

    (bundle,) = payload_campaign(root, n, "p/run", configure).bundle_files()
    return bundle


def test_memory_budget_stops_only_the_greedy_quantum(tmp_path: Path) -> None:
    # t1 really allocates (and touches) 600 MiB and holds it for 3 s; the budget is 300 MiB.
    bundle = _payload_campaign(tmp_path, allocate={1: 600 * 2**20}, n=2, sleep=3.0)
    doc = json.loads(bundle.read_text())
    result = pilot(
        "run", bundle, "--workspace", tmp_path / "ws", "--processes", "2", "--memory-per-worker", "300MiB"
    )
    assert result.returncode == ExitCode.QUANTA_FAILED, result.stderr
    report = read_report(tmp_path / "ws")
    by_key = {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}
    for detector in (0, 1):
        assert by_key["t0", detector]["status"] == "succeeded"
        greedy = by_key["t1", detector]
        assert greedy["status"] == "failed"
        assert greedy["exception_type"] == "pilot.MemoryLimitExceeded"
        assert greedy["exception_message"].startswith("memory: worker RSS")
        assert "exceeded its budget of 600 MiB" in greedy["exception_message"]  # the retry's, 2 x 300
        (first,) = greedy["attempts"]
        assert "exceeded its budget of 300 MiB" in first["exception_message"]
    assert len(doc["quantum_ids"]) == 4


def test_transient_dataset_is_never_written(tmp_path: Path) -> None:
    bundle = _payload_campaign(tmp_path, allocate={}, n=4)
    doc = json.loads(bundle.read_text())
    doc["execution"]["transient_dataset_types"] = ["mid"]
    bundle.write_text(json.dumps(doc))
    result = pilot("run", bundle, "--workspace", tmp_path / "ws", "--processes", "2")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    report = read_report(tmp_path / "ws")
    assert report["io"]["transient_datasets_not_written"] == 4
    assert report["io"]["intermediate_bytes_read"] == 0
    assert not list((tmp_path / "ws" / bundle.stem / "repo").rglob("mid_*"))
    assert len(list((tmp_path / "ws" / bundle.stem / "repo").rglob("final_*"))) == 4
    assert report["stage_out"]["n_datasets"] == 4 * 2 + 4 * 3  # t0: metadata+log; t1: final+metadata+log
    # A quantum and its transient input's producer share a worker.
    by_key = {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}
    for detector in range(4):
        assert by_key["t0", detector]["worker"] == by_key["t1", detector]["worker"]
