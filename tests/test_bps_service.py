"""``wmsServiceClass: pilot.bps.PilotService``: real ``bps submit / report / status / cancel / restart``
against a real ``pilot serve`` (started with no bundles) and real ``pilot start`` processes.

Everything on 127.0.0.1.  BPS builds each graph itself from a pipeline YAML, clusters it one
job per detector, and the plugin queues one bundle per job; pilots claim, run and stage them,
and the scheduler ingests.  Outputs are compared with a stock BPS submission (ctrl_bps_parsl,
``pipetask run-qbb`` jobs, ``butler aggregate-graph``) of the same pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import (
    FAILING_CHAIN,
    TOKEN,
    make_campaign,
    payload_campaign,
    registered_datasets,
    serve,
    wait_for,
)
from test_bps_submit import _submit as stock_submit

from pilot.bps.local_submit import MockTask, Submission, pipeline_yaml, submit_yaml
from pilot.glidein.client import SchedulerClient

SERVICE = "pilot.bps.PilotService"


@dataclasses.dataclass(frozen=True)
class Workflow:
    """What one test submission varies."""

    pipeline: Path
    labels: list[str]
    repo: Path
    in_collection: str
    output: str
    extra: str = ""  # more YAML: scoped values


def _submit_yaml(directory: Path, url: str, token: Path, wf: Workflow) -> Path:
    """Write ``directory/submit.yaml``: the workflow, clustered one job per detector, to PilotService."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "submit.yaml"
    submission = Submission(
        pipeline=str(wf.pipeline),
        butler=str(wf.repo),
        in_collection=wf.in_collection,
        output=wf.output,
        labels=wf.labels,
        output_run=f"{wf.output}/run",
        submit_path=str(directory / "submit"),
        pilot_scheduler=url,
        pilot_token_file=str(token),
        extra=wf.extra,
    )
    path.write_text(submit_yaml(submission))
    return path


def _env(url: str) -> dict[str, str]:
    """This interpreter's tools first on PATH, this checkout first on PYTHONPATH, the scheduler's URL."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env["PILOT_SCHEDULER_URL"] = url
    return env


def _bps(url: str, token_file: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = _env(url) | {"PILOT_TOKEN_FILE": str(token_file)}
    bps = str(Path(sys.executable).with_name("bps"))
    return subprocess.run([bps, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _start(url: str, area: Path, *args: str) -> subprocess.Popen:
    token = area.parent / f"{area.name}.token"
    token.write_text(TOKEN + "\n")
    command = [sys.executable, "-m", "pilot.cli", "start", "--scheduler", url, "--token-file", str(token)]
    command += ["--workspace", str(area), "--keep-workspaces", *args]
    with open(f"{area}.err", "w") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=_env(url))


def _run_id(submitted: subprocess.CompletedProcess[str]) -> str:
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    return next(
        line.split(":", 1)[1].strip() for line in submitted.stdout.splitlines() if line.startswith("Run Id:")
    )


def _table(report: str) -> dict[str, list[int]]:
    """The per-label rows of ``bps report``'s detailed table: counts per WmsStates column."""
    rows = {}
    for line in report.splitlines():
        parts = line.split()
        if len(parts) == 13 and parts[1].isdigit():
            rows[parts[0]] = [int(p) for p in parts[1:]]
    return rows


SUCCEEDED, FAILED, DELETED, RUNNING, PENDING = 8, 9, 6, 5, 4  # columns of the table


def _executions(*areas: Path) -> Counter[tuple[str, int]]:
    """Successful runs of each (task, detector) in pilot work areas, from the bundles' journals."""
    runs: Counter[tuple[str, int]] = Counter()
    for area in areas:
        for journal in area.glob("*/journal.jsonl"):
            for line in journal.read_text().splitlines():
                result = json.loads(line)["result"]
                if result["status"] == "succeeded":
                    runs[(result["task_label"], result["data_id"]["detector"])] += 1
    return runs


def test_pilot_service_registers_what_stock_bps_does(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path / "camp", FAILING_CHAIN, n_detectors=4)
    pipeline = tmp_path / "pipeline.yaml"
    tasks = [MockTask(s.label, s.input, s.output, fail_condition=s.fail_condition) for s in FAILING_CHAIN]
    pipeline.write_text(pipeline_yaml(tasks))
    stock_repo, pilot_repo = tmp_path / "dbb-pipetask", tmp_path / "dbb-service"
    for repo in (stock_repo, pilot_repo):
        shutil.copytree(camp.repo, repo)
    with ThreadPoolExecutor(1) as pool:
        stock = pool.submit(stock_submit, tmp_path, stock_repo, pipeline, "pipetask")
        work = tmp_path / "service"
        work.mkdir()
        with serve(work / "scheduler", pilot_repo, "--retry-after", "1") as url:
            labels = [spec.label for spec in FAILING_CHAIN]
            memory = "pipetask:\n  calibrate:\n    requestMemory: 3000\n"
            wf = Workflow(pipeline, labels, pilot_repo, "input_chain", "bps", memory)
            config = _submit_yaml(work, url, work / "token", wf)
            run_id = _run_id(_bps(url, work / "token", "submit", str(config), cwd=work))
            queued = _bps(
                url, work / "token", "report", "--wms-service-class", SERVICE, "--id", run_id, cwd=work
            )
            assert _table(queued.stdout)["chain"][PENDING] == 4, queued.stdout + queued.stderr
            bundles = sorted((work / "submit" / "pilot-bundles").glob("*.json"))
            assert len(bundles) == 4
            for path in bundles:  # calibrate's requestMemory is its chain job's (BPS takes the max)
                document = json.loads(path.read_text())
                assert document["resources"]["memory_mb"] == 3000
                assert document["execution"]["memory_per_worker"] == "3000MiB"
                assert document["retries"] == {
                    "max_attempts": 6,
                    "retry_unless_exit": [1, 2],
                    "memory_multiplier": 2.0,
                }
            pilots = [
                _start(url, work / f"pilot{i}", "--idle-timeout", "3", "--processes", "1") for i in (1, 2)
            ]
            for proc in pilots:
                assert proc.wait(timeout=600) == 0, Path(f"{work}/pilot1.err").read_text()[-3000:]
            client = SchedulerClient(url, TOKEN)
            wait_for(lambda: client.workflow(run_id).state != "running", "the ingests")
            done = _bps(
                url, work / "token", "report", "--wms-service-class", SERVICE, "--id", run_id, cwd=work
            )
            status = _bps(
                url, work / "token", "status", "--wms-service-class", SERVICE, "--id", run_id, cwd=work
            )
        registered = registered_datasets(pilot_repo, "bps/run", with_ids=False)
        assert registered == stock.result()
    row = _table(done.stdout)["chain"]
    assert (row[SUCCEEDED], row[FAILED]) == (3, 1), done.stdout  # detector 2's chain failed
    assert status.returncode == 19 and "FAILED" in status.stdout + status.stderr  # WmsStates.FAILED
    runs = _executions(work / "pilot1", work / "pilot2")
    assert sum(runs.values()) == 10 and set(runs.values()) == {1}  # 12 quanta, 1 failed, 1 blocked


RAWS = "raw/run"  # payload_campaign's raws
PAYLOAD_PIPELINE = """\
description: two PayloadTasks per detector
tasks:
  t0:
    class: pilot.demo.probe_tasks.PayloadTask
    config:
      connections.inputName: raw
      connections.outputName: mid
      sleep: {sleep}
      fail_count_file: "{fail_counts}/{{detector}}"
  t1:
    class: pilot.demo.probe_tasks.PayloadTask
    config:
      connections.inputName: mid
      connections.outputName: final
      sleep: {sleep}
"""


def test_exclude_cancel_and_restart(tmp_path: Path) -> None:
    camp = payload_campaign(tmp_path / "camp", 4, "probe/run", lambda index, config: None)
    fail_counts = tmp_path / "fail-counts"
    fail_counts.mkdir()
    (fail_counts / "1").write_text("1\n")  # detector 1's t0 fails once: its job fails, a restart succeeds
    work = tmp_path / "work"
    work.mkdir()
    quick = tmp_path / "quick.yaml"
    quick.write_text(PAYLOAD_PIPELINE.format(sleep=0.0, fail_counts=fail_counts))
    slow = tmp_path / "slow.yaml"
    slow.write_text(PAYLOAD_PIPELINE.format(sleep=3.0, fail_counts=tmp_path / "none"))
    token = work / "token"
    with serve(work / "scheduler", camp.repo, "--lease-ttl", "6", "--retry-after", "1") as url:
        client = SchedulerClient(url, TOKEN)
        # 1. A failure, then bps restart: only the failed job's quanta run again.
        exclude = "pipetask:\n  t1:\n    pilotExclude: detector IN (3)\n"
        config = _submit_yaml(
            work / "w1", url, token, Workflow(quick, ["t0", "t1"], camp.repo, RAWS, "w1", exclude)
        )
        w1 = _run_id(_bps(url, token, "submit", str(config), cwd=work))
        pilot = _start(url, work / "pilot", "--idle-timeout", "120", "--processes", "1")
        wait_for(lambda: client.workflow(w1).state != "running", "w1 to finish")
        first = client.workflow(w1)
        assert first.state == "failed" and first.excluded == {"t1": 1}
        assert [j.state for j in first.jobs].count("failed") == 1
        restarted = _bps(url, token, "restart", "--wms-service-class", SERVICE, "--id", w1, cwd=work)
        assert f"Run Id: {w1}" in restarted.stdout, restarted.stdout + restarted.stderr
        wait_for(lambda: client.workflow(w1).state == "succeeded", "w1's restart to succeed")
        runs = _executions(work / "pilot")
        assert runs == {(t, d): 1 for t in ("t0", "t1") for d in range(4) if (t, d) != ("t1", 3)}
        w1_datasets = Counter(name for name, _ in registered_datasets(camp.repo, "w1/run", with_ids=False))
        assert (w1_datasets["mid"], w1_datasets["final"]) == (4, 3)  # t1 of detector 3 excluded
        # 2. bps cancel while a bundle runs: the pilot stops it and nothing of it is ingested.
        config = _submit_yaml(work / "w2", url, token, Workflow(slow, ["t0", "t1"], camp.repo, RAWS, "w2"))
        w2 = _run_id(_bps(url, token, "submit", str(config), cwd=work))
        wait_for(lambda: any(j.state == "running" for j in client.workflow(w2).jobs), "a w2 job to run")
        running = _bps(url, token, "report", "--wms-service-class", SERVICE, "--id", w2, cwd=work)
        assert _table(running.stdout)["chain"][RUNNING] == 1, running.stdout  # one pilot, one bundle
        cancelled = _bps(url, token, "cancel", "--wms-service-class", SERVICE, "--id", w2, cwd=work)
        assert "Successfully canceled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
        status = _bps(url, token, "status", "--wms-service-class", SERVICE, "--id", w2, cwd=work)
        assert status.returncode == 16  # WmsStates.DELETED
        wait_for(lambda: all(p.bundle_id is None for p in client.status().pilots), "the pilot to let go")
        report = _bps(url, token, "report", "--wms-service-class", SERVICE, "--id", w2, cwd=work)
        row = _table(report.stdout)["chain"]
        # A job may have finished before the cancel came (a busy machine): it stays done.
        assert row[DELETED] + row[SUCCEEDED] == 4 and row[DELETED] >= 3, report.stdout
        outputs = Counter(name for name, _ in registered_datasets(camp.repo, "w2/run", with_ids=False))
        # Each job is one detector's t0 → t1: whole for a finished job, nothing of a cancelled one.
        assert outputs["mid"] == outputs["final"] == row[SUCCEEDED]
        pilot.terminate()  # may come while it still stops the cancelled bundle: it must drain anyway
        assert pilot.wait(timeout=120) == 16, (work / "pilot.err").read_text()[-3000:]


def test_scoped_activators_reach_the_job_bundles() -> None:
    from collections import Counter as Count

    from lsst.ctrl.bps import BpsConfig, GenericWorkflowJob

    from pilot.bps.workflow import _settings, activation_of

    config = BpsConfig(
        {
            "pipetask": {"legacy": {"pilotActivator": "exec"}, "isr": {"requestMemory": 3000}},
            "pilotActivatorSettings": {"exec": {"commands": {"legacy": {"argv": ["prog", "{output[x]}"]}}}},
            "pilotLocalRepo": "sqlite",
        }
    )
    activation = activation_of(config, ["isr", "legacy", "measure"])
    assert activation.by_label == {"legacy": "exec"} and activation.local_repo == "sqlite"
    job = GenericWorkflowJob(name="chain_1", label="chain", quanta_counts=Count({"legacy": 1, "measure": 1}))
    execution = _settings(job, activation).execution
    assert execution.activators_by_label == {"legacy": "exec"}
    assert execution.activator_settings["exec"]["commands"]["legacy"]["argv"] == ["prog", "{output[x]}"]
    other = GenericWorkflowJob(name="isr_1", label="isr", quanta_counts=Count({"isr": 1}))
    assert _settings(other, activation).execution.activators_by_label == {}
