"""Submit YAMLs for ``bps submit`` on this machine: a mock-task pipeline, the loopback Parsl site.

What ``pilot demo --bps``, the tests and the benchmark hand to a real ``bps submit``: a
pipeline YAML of ``lsst.pipe.base.tests.mocks.DynamicTestPipelineTask`` chains (BPS builds
the quantum graph from it with ``pipetask qgraph``) and a submit YAML that runs the
workflow with ctrl_bps_parsl on :class:`pilot.bps.parsl_local.LoopbackLocal` (each job's
command either stock ``pipetask run-qbb`` or ``pilot run-qbb``) or with
``pilot.bps.PilotService`` on a running ``pilot serve``, clustered one job per detector
chain or, with BPS's ``partitionDimensions``, K detectors' chains per job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DIMENSIONS = ["instrument", "detector"]

PILOT_RUN_QUANTUM = (
    "pilot {runPreCmdOpts} run-qbb {butlerConfig} {fileDistributionEndPoint}{qgraphFile}"
    " --qgraph-node-id {qgraphNodeId} {extraRunQuantumOptions}"
)

# BPS's default final job command, through pilot.bps.final_job so the mocks' storage classes exist.
FINAL_JOB = (
    "python -m pilot.bps.final_job {finalPreCmdOpts} aggregate-graph"
    " {fileDistributionEndPoint}{qgraphFile} {butlerConfig} -j {requestCpus}"
    " --register-dataset-types {updateOutputChain} {extraAggregateOptions}"
)


@dataclasses.dataclass(frozen=True)
class MockTask:
    """One mock task of a chain: one quantum per detector, ``input`` → ``output``."""

    label: str
    input: str
    output: str
    sleep: float = 0.0
    fail_condition: str = ""


def pipeline_yaml(tasks: Sequence[MockTask], description: str = "A chain of pipe_base mock tasks") -> str:
    """A pipeline YAML of ``tasks`` as ``DynamicTestPipelineTask`` instances."""
    lines = [f"description: {json.dumps(description)}", "tasks:"]
    for task in tasks:
        python = [
            "from lsst.pipe.base.tests.mocks import DynamicConnectionConfig",
            f"config.dimensions = {DIMENSIONS!r}",
            f"config.inputs['input'] = DynamicConnectionConfig("
            f"dataset_type_name={task.input!r}, dimensions={DIMENSIONS!r})",
            f"config.outputs['output'] = DynamicConnectionConfig("
            f"dataset_type_name={task.output!r}, dimensions={DIMENSIONS!r})",
            f"config.sleep = {task.sleep!r}",
            f"config.fail_condition = {task.fail_condition!r}",
        ]
        lines += [
            f"  {task.label}:",
            "    class: lsst.pipe.base.tests.mocks.DynamicTestPipelineTask",
            "    config:",
            "      python: |",
            *(f"        {line}" for line in python),
        ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Submission:
    """What varies between the submissions of one machine's BPS workflows."""

    pipeline: str
    butler: str
    in_collection: str
    output: str
    labels: Sequence[str]
    output_run: str = "{output}/{timestamp}"
    submit_path: str = "${PWD}/submit/{outputRun}"
    run_dir: str = "runinfo"
    """Parsl's run directory (relative to where ``bps submit`` runs)."""
    cores: int = 2
    job_command: str = "pilot"
    """``pilot`` (``pilot run-qbb`` jobs) or ``pipetask`` (BPS's default ``pipetask run-qbb``)."""
    detectors_per_job: int = 1
    """Detectors' chains per job: above 1, BPS partitions the detectors into jobs of this many."""
    pilot_scheduler: str = ""
    """A ``pilot serve`` URL: submit to ``pilot.bps.PilotService`` there instead of Parsl."""
    pilot_token_file: str = ""
    """That scheduler's token file (with ``pilot_scheduler``)."""
    extra: str = ""
    """More submit YAML, appended as it is (scoped values such as ``pipetask.<label>.requestMemory``)."""


def _cluster_yaml(sub: Submission) -> str:
    """BPS's dimension clustering: one job per detector, or ``detectors_per_job`` detectors per job."""
    chain = f"{len(sub.labels)} quanta"
    if sub.detectors_per_job == 1:
        return f"""\
# One job per detector: its chain of {chain}.
clusterAlgorithm: lsst.ctrl.bps.quantum_clustering_funcs.dimension_clustering
cluster:
  chain:
    pipetasks: {",".join(sub.labels)}
    dimensions: detector
"""
    # partitionMaxSize partitions the detector values (sorted as strings) into jobs of that many.
    return f"""\
# {sub.detectors_per_job} detectors per job, each its chain of {chain}.
clusterAlgorithm: lsst.ctrl.bps.quantum_clustering_funcs.dimension_clustering
cluster:
  chain:
    pipetasks: {",".join(sub.labels)}
    dimensions: instrument
    partitionDimensions: detector
    partitionMaxSize: {sub.detectors_per_job}
"""


def _wms_yaml(sub: Submission) -> str:
    """Where the jobs run: ``pilot serve`` through PilotService, else Parsl on the loopback site."""
    if sub.pilot_scheduler:
        return f"""\
wmsServiceClass: pilot.bps.PilotService
pilotScheduler: {json.dumps(sub.pilot_scheduler)}
pilotTokenFile: {json.dumps(sub.pilot_token_file)}
"""
    return f"""\
wmsServiceClass: lsst.ctrl.bps.parsl.ParslService
computeSite: loopback
site:
  loopback:
    class: pilot.bps.parsl_local.LoopbackLocal
    cores: {sub.cores}
    run_dir: {json.dumps(sub.run_dir)}
    retries: 0  # a failing mock quantum fails again; BPS's final job registers what succeeded
"""


def submit_yaml(sub: Submission) -> str:
    """The submit YAML of ``sub``: Parsl on loopback (or PilotService), clustered by detector."""
    run_quantum = (
        f"runQuantumCommand: {json.dumps(PILOT_RUN_QUANTUM)}\n"
        if sub.job_command == "pilot"
        else "# runQuantumCommand: BPS's default, pipetask run-qbb\n"
    )
    return f"""\
pipelineYaml: {json.dumps(sub.pipeline)}
payload:
  payloadName: {json.dumps(sub.output)}
  butlerConfig: {json.dumps(sub.butler)}
  inCollection: {json.dumps(sub.in_collection)}
  dataQuery: ""
  output: {json.dumps(sub.output)}
  outputRun: {json.dumps(sub.output_run)}
submitPath: {json.dumps(sub.submit_path)}

{_wms_yaml(sub)}
{_cluster_yaml(sub)}
{run_quantum}finalJob:
  requestCpus: 1
  command1: {json.dumps(FINAL_JOB)}
{sub.extra}"""


def bps_submit(submit: Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``bps submit SUBMIT`` in ``cwd`` (where Parsl writes ``runinfo``); return it finished.

    Its jobs find this interpreter's ``pipetask``, ``butler``, ``python`` and ``pilot`` first
    on ``PATH``, and this ``pilot`` package first on ``PYTHONPATH``.  It runs in a session of
    its own, ended as a whole afterwards so no Parsl interchange or worker outlives it.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH", "")] if p)
    bps = Path(sys.executable).with_name("bps")
    cwd.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(bps), "submit", str(submit)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")
