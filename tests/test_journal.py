"""The bundle journal: flushed (now and then fsynced) appends, reading back, torn lines, skipping."""

from __future__ import annotations

import json
import logging
import threading
import types
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import TaskSpec, make_campaign
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

import pilot.journal as journal_module
from pilot.journal import JOURNAL_NAME, Journal, quanta_to_skip
from pilot.report import QuantumResult, QuantumStatus


def result(status: QuantumStatus, quantum_id: uuid.UUID | None = None, **fields: object) -> QuantumResult:
    return QuantumResult(
        quantum_id=quantum_id or uuid.uuid4(),
        task_label="calibrate",
        data_id={"instrument": "DemoCam", "detector": 3},
        status=status,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / JOURNAL_NAME)


# -- appending and reading back -------------------------------------------------------


def test_no_journal_yet(journal: Journal) -> None:
    assert not journal.exists()
    assert journal.succeeded() == {}


def test_recorded_success_reads_back_whole(journal: Journal) -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    done = result(
        "succeeded",
        worker=1,
        started_at=started,
        ended_at=started,
        wall_seconds=1.5,
        caveat="no work found",
        output_dataset_ids=[uuid.uuid4(), uuid.uuid4()],
    )
    journal.record(done)
    assert journal.exists()
    assert journal.succeeded() == {done.quantum_id: done}
    # One JSON object per line, newline-terminated.
    (line,) = journal.path.read_text().splitlines(keepends=True)
    assert line.endswith("\n") and json.loads(line)["event"] == "finished"


def test_only_successes_are_returned(journal: Journal) -> None:
    ok, failed, blocked = result("succeeded"), result("failed"), result("blocked")
    for each in (ok, failed, blocked):
        journal.record(each)
    assert set(journal.succeeded()) == {ok.quantum_id}
    assert len(journal.path.read_text().splitlines()) == 3


def test_latest_outcome_of_a_quantum_wins(journal: Journal) -> None:
    retried, regressed = uuid.uuid4(), uuid.uuid4()
    journal.record(result("failed", retried))
    journal.record(result("succeeded", regressed))
    journal.record(result("succeeded", retried, worker=2))
    journal.record(result("failed", regressed))
    succeeded = journal.succeeded()
    assert set(succeeded) == {retried}
    assert succeeded[retried].worker == 2


def test_each_record_is_flushed_and_fsyncs_are_spaced(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []

    def fsync(fd: int) -> None:
        # By the time the pilot asks for the sync, the whole line has left Python's buffer.
        synced.append(journal.path.read_text())

    monkeypatch.setattr(journal_module, "os", types.SimpleNamespace(fsync=fsync))
    first, second, third = result("succeeded"), result("failed"), result("succeeded")
    journal.sync_interval = 3600.0
    journal.record(first)  # the first record of a journal is synced at once
    journal.record(second)  # within the interval: flushed, not synced
    assert len(synced) == 1
    assert str(first.quantum_id) in synced[0] and synced[0].endswith("\n")
    assert str(second.quantum_id) in journal.path.read_text()  # readable (flushed) all the same
    journal.sync_interval = 0.0
    journal.record(third)  # the interval is over: one sync covers both lines since the last
    assert len(synced) == 2
    assert str(second.quantum_id) in synced[1] and synced[1].count("\n") == 3


def test_concurrent_records_never_interleave(journal: Journal) -> None:
    batches = [[result("succeeded") for _ in range(25)] for _ in range(6)]

    def write(batch: list[QuantumResult]) -> None:
        for each in batch:
            journal.record(each)

    threads = [threading.Thread(target=write, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = {each.quantum_id for batch in batches for each in batch}
    assert set(journal.succeeded()) == expected
    assert len(journal.path.read_text().splitlines()) == len(expected)


# -- damage -------------------------------------------------------------------------


def _tear_last_line(journal: Journal, keep: int) -> None:
    """Simulate a pilot killed while writing: append the first ``keep`` characters of a record."""
    line = json.dumps({"event": "finished", "result": result("succeeded").model_dump(mode="json")})
    with open(journal.path, "a", encoding="utf-8") as stream:
        stream.write(line[:keep])


@pytest.mark.parametrize("keep", [1, 30, 200])
def test_torn_last_line_is_ignored(journal: Journal, keep: int, caplog: pytest.LogCaptureFixture) -> None:
    first, second = result("succeeded"), result("succeeded")
    journal.record(first)
    journal.record(second)
    _tear_last_line(journal, keep)
    with caplog.at_level(logging.WARNING, logger="pilot.journal"):
        assert set(journal.succeeded()) == {first.quantum_id, second.quantum_id}
    assert "Ignoring unreadable line 3" in caplog.text


def test_unreadable_line_in_the_middle_does_not_hide_later_ones(journal: Journal) -> None:
    before, after = result("succeeded"), result("succeeded")
    journal.record(before)
    with open(journal.path, "a", encoding="utf-8") as stream:
        stream.write("not json\n")
        stream.write(json.dumps({"event": "finished"}) + "\n")  # no result
        stream.write(json.dumps({"event": "finished", "result": {"status": "succeeded"}}) + "\n")
    journal.record(after)
    assert set(journal.succeeded()) == {before.quantum_id, after.quantum_id}


def test_record_after_torn_last_line_is_kept(journal: Journal) -> None:
    journal.record(result("succeeded"))
    _tear_last_line(journal, 30)
    resumed = result("succeeded")
    journal.record(resumed)
    assert resumed.quantum_id in journal.succeeded()


# -- quanta_to_skip on a real quantum graph ----------------------------------------------

# isr -> postISRCCD -> calibrate -> calexp -> measure, and postISRCCD -> background.
TASKS = (
    TaskSpec("isr", "raw", "postISRCCD"),
    TaskSpec("calibrate", "postISRCCD", "calexp"),
    TaskSpec("measure", "calexp", "src"),
    TaskSpec("background", "postISRCCD", "skyBackground"),
)


@pytest.fixture(scope="module")
def qg(tmp_path_factory: pytest.TempPathFactory) -> PredictedQuantumGraph:
    camp = make_campaign(tmp_path_factory.mktemp("journal"), TASKS, n_detectors=2)
    return PredictedQuantumGraph.read_execution_quanta(camp.qgraph)


def quantum(qg: PredictedQuantumGraph, label: str, detector: int) -> uuid.UUID:
    """The ID of ``label``'s quantum for ``detector``."""
    (found,) = (
        q
        for q, node in qg.quantum_only_xgraph.nodes(data=True)
        if node["task_label"] == label and node["data_id"]["detector"] == detector
    )
    return found


def ids(qg: PredictedQuantumGraph, labels: Iterable[str], detector: int = 0) -> set[uuid.UUID]:
    return {quantum(qg, label, detector) for label in labels}


def skip(qg: PredictedQuantumGraph, succeeded: Iterable[str], transient: Iterable[str] = ()) -> set[str]:
    """Labels skipped for detector 0 when ``succeeded`` are journaled and the whole graph is the bundle."""
    order = list(qg.quantum_only_xgraph)
    skipped = quanta_to_skip(qg, order, ids(qg, succeeded), transient)
    names = {q: qg.quantum_only_xgraph.nodes[q]["task_label"] for q in skipped}
    return set(names.values())


def test_without_transients_every_journaled_success_is_skipped(qg: PredictedQuantumGraph) -> None:
    assert skip(qg, ["isr", "calibrate"]) == {"isr", "calibrate"}
    assert skip(qg, []) == set()


def test_successes_outside_the_bundle_are_not_reported(qg: PredictedQuantumGraph) -> None:
    order = sorted(ids(qg, ["isr", "calibrate", "measure", "background"], detector=1), key=str)
    journaled = ids(qg, ["isr", "calibrate"], detector=0) | ids(qg, ["isr"], detector=1)
    assert quanta_to_skip(qg, order, journaled, []) == ids(qg, ["isr"], detector=1)


def test_producer_of_a_transient_input_still_needed_runs_again(qg: PredictedQuantumGraph) -> None:
    # background still has to run and needs postISRCCD, which was never written: isr reruns.
    assert skip(qg, ["isr", "calibrate"], transient=["postISRCCD"]) == {"calibrate"}


def test_producer_of_a_transient_no_one_still_needs_is_skipped(qg: PredictedQuantumGraph) -> None:
    # measure is still to run, but it reads calexp, which was written.
    assert skip(qg, ["isr", "calibrate", "background"], transient=["postISRCCD"]) == {
        "isr",
        "calibrate",
        "background",
    }


def test_reruns_propagate_up_chains_of_transients(qg: PredictedQuantumGraph) -> None:
    # measure needs calexp (transient): calibrate reruns, so it needs postISRCCD (transient): isr
    # reruns too.  background's output is persisted: it stays skipped.
    assert skip(qg, ["isr", "calibrate", "background"], transient=["postISRCCD", "calexp"]) == {"background"}


def test_consumers_outside_the_bundle_do_not_force_a_rerun(qg: PredictedQuantumGraph) -> None:
    order = sorted(ids(qg, ["isr", "calibrate"]), key=str)  # measure and background are elsewhere
    journaled = ids(qg, ["isr", "calibrate"])
    assert quanta_to_skip(qg, order, journaled, ["postISRCCD", "calexp"]) == journaled


def test_other_chains_do_not_affect_the_decision(qg: PredictedQuantumGraph) -> None:
    # Detector 1 fully journaled, detector 0 not at all: only detector 1 is skipped.
    order = list(qg.quantum_only_xgraph)
    journaled = ids(qg, ["isr", "calibrate", "measure", "background"], detector=1)
    assert quanta_to_skip(qg, order, journaled, ["postISRCCD", "calexp"]) == journaled
