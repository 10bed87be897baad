"""Workflows over the protocol (``/v1/workflows``): submit, status per job, cancel, restart.

A real ``pilot serve`` on 127.0.0.1 started with no bundles; synthetic bundle files (no
graph) are submitted as the BPS plugin submits them, and a test client plays the pilots.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import serve
from lsst.resources import ResourcePath
from test_scheduler import SLOT, client, write_bundles

from pilot.bundle_model import ExecutionSpec, RetryPolicy, load_bundle
from pilot.errors import LeaseGone, SchedulerRejected
from pilot.glidein.client import SchedulerClient
from pilot.protocol import Heartbeat, Report, WorkflowBundle, WorkflowSubmit
from pilot.scheduler.outcome import FailureCause
from pilot.scheduler.remainder import make_remainder
from pilot.scheduler.retry_policy import decide


def _submit(c: SchedulerClient, directory: Path, labels: dict[str, str], workflow: str = "wf1") -> None:
    bundles = [
        WorkflowBundle(path=(directory / f"{b}.json").as_uri(), label=label) for b, label in labels.items()
    ]
    c.submit_workflow(WorkflowSubmit(workflow_id=workflow, run="syn/run", bundles=bundles, excluded={"t": 2}))


def _report(c: SchedulerClient, lease: str, ok: list[str], bad: list[str]) -> None:
    status = "failed" if bad else "succeeded"
    c.report(
        lease,
        Report(
            status=status,
            exit_code=10 if bad else 0,
            succeeded_quantum_ids=ok,
            failed_quantum_ids=bad,
            staged=False,
        ),
    )


def test_restart_reruns_only_failed_jobs_in_dependency_order(tmp_path: Path) -> None:
    bundles = tmp_path / "submit"
    once = {"max_attempts": 1}
    quanta = write_bundles(
        bundles,
        {"a": {"retries": once}, "b": {"depends_on": ["a"], "retries": once}, "c": {"retries": once}},
    )
    with serve(tmp_path / "absent-dir", tmp_path / "dbb") as url:  # starts with no bundles at all
        c = client(url)
        assert c.status().bundles["queued"] == 0
        _submit(c, bundles, {"a": "isr", "b": "calibrate", "c": "isr"})
        _submit(c, bundles, {"a": "isr", "b": "calibrate", "c": "isr"})  # a repeat adds nothing
        wf = c.workflow("wf1")
        assert [(j.job_id, j.label, j.state) for j in wf.jobs] == [
            ("a", "isr", "queued"),
            ("b", "calibrate", "waiting"),
            ("c", "isr", "queued"),
        ]
        assert (wf.state, wf.excluded) == ("running", {"t": 2})
        first = c.claim("p1", SLOT)
        _report(c, first.lease.lease_id, quanta["a"][1:], quanta["a"][:1])  # one quantum of a fails
        for _ in range(2):
            claim = c.claim("p1", SLOT)
            bundle = claim.bundle["bundle_id"]
            if bundle == "b":  # b's first quantum was blocked by a's failure
                _report(c, claim.lease.lease_id, quanta["b"][1:], quanta["b"][:1])
            else:
                _report(c, claim.lease.lease_id, quanta[bundle], [])
        wf = c.workflow("wf1")
        assert {j.job_id: (j.state, j.failed_quanta, j.exit_code) for j in wf.jobs} == {
            "a": ("failed", 1, 10),
            "b": ("failed", 1, 10),
            "c": ("done", 0, None),
        }
        assert wf.state == "failed"
        restarted = c.workflow("wf1", "restart")
        assert restarted.message == "restarted 2 jobs: 6 quanta re-queued"  # nothing was staged
        assert {j.job_id: (j.state, j.bundle_id) for j in restarted.jobs} == {
            "a": ("queued", "a-r1"),
            "b": ("waiting", "b-r1"),
            "c": ("done", "c"),
        }
        again = c.claim("p1", SLOT)
        assert again.bundle["bundle_id"] == "a-r1"
        assert c.claim("p2", SLOT).no_work  # b's retry waits for a's
        _report(c, again.lease.lease_id, quanta["a"], [])
        last = c.claim("p2", SLOT)
        assert last.bundle["bundle_id"] == "b-r1"
        _report(c, last.lease.lease_id, quanta["b"], [])
        assert c.workflow("wf1").state == "succeeded"
        assert c.workflows().workflows[0].workflow_id == "wf1"


def test_cancel_withdraws_running_bundles_and_restart_requeues_them(tmp_path: Path) -> None:
    bundles = tmp_path / "submit"
    quanta = write_bundles(bundles, {"a": {}, "b": {}})
    with serve(tmp_path / "sched", tmp_path / "dbb") as url:
        c = client(url)
        _submit(c, bundles, {"a": "chain", "b": "chain"})
        running = c.claim("p1", SLOT)
        cancelled = c.workflow("wf1", "cancel")
        assert cancelled.state == "cancelled"
        assert cancelled.message == "cancelled 1 queued and 1 running bundles"
        assert [j.state for j in cancelled.jobs] == ["cancelled", "cancelled"]
        with pytest.raises(LeaseGone):  # the pilot's next heartbeat stops the bundle
            c.heartbeat(running.lease.lease_id, Heartbeat())
        with pytest.raises(LeaseGone):  # and its report is refused: nothing of it is ingested
            _report(c, running.lease.lease_id, quanta["a"], [])
        assert c.claim("p2", SLOT).no_work
        assert c.status().bundles["cancelled"] == 2
        restarted = c.workflow("wf1", "restart")
        assert restarted.state == "running" and [j.bundle_id for j in restarted.jobs] == ["a-r1", "b-r1"]
        assert c.claim("p2", SLOT).bundle["quantum_ids"] == quanta["a"]


def test_unknown_workflow_and_bad_bundle_are_rejected(tmp_path: Path) -> None:
    with serve(tmp_path / "sched", tmp_path / "dbb") as url:
        c = client(url)
        with pytest.raises(SchedulerRejected, match="no workflow nope"):
            c.workflow("nope")
        with pytest.raises(SchedulerRejected, match="does not exist"):
            _submit(c, tmp_path, {"missing": "isr"})
        assert c.workflows().workflows == []


def _ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


def test_retry_policy_keeps_task_failures_final_when_told() -> None:
    task, memory, blocked_by_task, blocked_by_memory, unknown = _ids(5)
    causes = {
        task: FailureCause("ValueError", None),
        memory: FailureCause("pilot.MemoryLimitExceeded", None),
        blocked_by_task: FailureCause(None, task),
        blocked_by_memory: FailureCause(None, memory),
    }
    failed = {task, memory, blocked_by_task, blocked_by_memory, unknown}
    bps_like = RetryPolicy(retry_unless_exit=[1, 2], memory_multiplier=2)
    decision = decide(bps_like, failed, causes, counted=True, tries_left=True)
    assert decision.retried == {memory, blocked_by_memory, unknown}
    assert decision.memory_factor == 2
    assert decide(RetryPolicy(), failed, causes, counted=True, tries_left=True).retried == failed
    assert not decide(bps_like, failed, causes, counted=False, tries_left=True).retried  # a drain
    assert not decide(bps_like, failed, causes, counted=True, tries_left=False).retried


def test_a_retry_after_a_memory_failure_gets_more_memory(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path, {"a": {"resources": {"memory_mb": 1000}}})["a"]
    parent = load_bundle(tmp_path / "a.json").model_copy(
        update={"execution": ExecutionSpec(memory_per_worker="500MiB")}
    )
    rest = make_remainder(parent, ResourcePath(tmp_path / "a.json"), "a-r1", quanta[:1], False, 2.0)
    assert (rest.resources.memory_mb, rest.execution.memory_per_worker) == (2000, "1000MiB")
    same = make_remainder(parent, ResourcePath(tmp_path / "a.json"), "a-r1", quanta[:1], False)
    assert (same.resources.memory_mb, same.execution.memory_per_worker) == (1000, "500MiB")
