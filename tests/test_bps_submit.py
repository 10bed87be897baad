"""A real ``bps submit`` with ctrl_bps_parsl on the loopback site: stock jobs against ``pilot run-qbb`` jobs.

BPS builds the graph from a pipeline YAML of mock tasks (3-task chain, 4 detectors, detector
2's calibrate failing), clusters it one job per detector, runs the jobs with Parsl and its
final job (``butler aggregate-graph``, through ``pilot.bps.final_job``).  The two submissions,
each on its own copy of the DBB, must register the same datasets.  A failed job still lets
``bps submit`` exit 0, so the outputs are what is checked.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import FAILING_CHAIN, make_campaign, registered_datasets

from pilot.bps.local_submit import MockTask, Submission, bps_submit, pipeline_yaml, submit_yaml

RUN = "bps/run"


def _submit(tmp_path: Path, repo: Path, pipeline: Path, job_command: str) -> dict[tuple[str, str], object]:
    work = tmp_path / job_command
    submission = Submission(
        pipeline=str(pipeline),
        butler=str(repo),
        in_collection="input_chain",  # where make_campaign's mock raws are
        output="bps",
        output_run=RUN,
        labels=[spec.label for spec in FAILING_CHAIN],
        submit_path=str(work / "submit"),
        cores=1,  # the two submissions run side by side on 2 cores
        job_command=job_command,
    )
    config = work / "bps-submit.yaml"
    work.mkdir()
    config.write_text(submit_yaml(submission))
    result = bps_submit(config, cwd=work)
    assert result.returncode == 0, result.stdout[-6000:]
    # One job per detector: each job's command holds its chain's three quanta.
    logs = sorted((work / "submit" / "logs" / "chain").glob("chain_*.stderr"))
    node_ids = [re.search(r"--qgraph-node-id (\S+)", log.read_text()) for log in logs]
    assert [len(ids.group(1).split(",")) if ids else 0 for ids in node_ids] == [3, 3, 3, 3]
    return registered_datasets(repo, RUN, with_ids=False)


def test_pilot_jobs_register_what_pipetask_jobs_do(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path / "camp", FAILING_CHAIN, n_detectors=4)
    pipeline = tmp_path / "pipeline.yaml"
    tasks = [MockTask(s.label, s.input, s.output, fail_condition=s.fail_condition) for s in FAILING_CHAIN]
    pipeline.write_text(pipeline_yaml(tasks))
    repos = {command: tmp_path / f"dbb-{command}" for command in ("pipetask", "pilot")}
    for repo in repos.values():
        shutil.copytree(camp.repo, repo)
    with ThreadPoolExecutor(2) as pool:
        futures = {c: pool.submit(_submit, tmp_path, repo, pipeline, c) for c, repo in repos.items()}
        registered = {command: future.result() for command, future in futures.items()}
    failed_job = (tmp_path / "pilot" / "submit" / "logs" / "chain" / "chain_2.stderr").read_text()
    assert "\npilot --long-log" in failed_job and "run-qbb: 1 of 3 quanta succeeded" in failed_job
    assert registered["pilot"] == registered["pipetask"]
    datasets = registered["pilot"]
    assert (
        sum(name == "src" for name, _ in datasets) == 3
    )  # detector 2's calibrate failed, its measure never ran
    assert sum(name == "calexp" for name, _ in datasets) == 3
    assert sum(name == "calibrate_log" for name, _ in datasets) == 4  # the failure's log is registered too
    assert ("calexp", "{instrument: 'DemoCam', detector: 2}") not in datasets
