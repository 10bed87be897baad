"""``pilot demo --bps``: the demo's DBB and 3-task pipeline through a real ``bps submit``.

BPS (ctrl_bps_parsl on :class:`pilot.bps.parsl_local.LoopbackLocal`) builds the graph from
``pipeline.yaml``, runs one job per detector with ``pilot run-qbb``, and its final job
registers the outputs.  Both YAMLs stay in the demo directory: ``bps submit
DIR/bps-submit.yaml`` submits the same workflow again, into a new RUN collection.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lsst.daf.butler import Butler
from lsst.pipe.base.tests.mocks import DirectButlerRepo

from ..bps.local_submit import MockTask, Submission, bps_submit, pipeline_yaml, submit_yaml
from .campaign import PIPELINE, add_demo_tasks, create_dbb

OUTPUT = "demo-bps"
IN_COLLECTION = "input_chain"  # DirectButlerRepo's, holding the mock raws


@dataclasses.dataclass
class BpsDemoResult:
    """What the submission did, for printing and for tests."""

    submit_yaml: Path
    returncode: int
    output: str
    output_run: str | None
    counts: dict[str, dict[str, int]]
    """Per task label: datasets registered of its ``output``, ``metadata`` and ``log``."""


def insert_raws(repo: Path, sleep: float) -> None:
    """Insert the mock raws (and register their dataset type) unless a demo already did."""
    with Butler.from_config(str(repo), writeable=True) as butler:
        mock_repo = DirectButlerRepo(butler, use_import_collections_as_input=False, data_root=None)
        add_demo_tasks(mock_repo, sleep)
        mock_repo.make_quantum_graph_builder(output_run="demo/unused", register_output_dataset_types=False)


def run_bps_demo(
    directory: Path, *, n_detectors: int = 24, sleep: float = 0.02, cores: int = 2
) -> BpsDemoResult:
    """Write ``pipeline.yaml`` and ``bps-submit.yaml`` in ``directory``, ``bps submit``, count outputs."""
    directory = directory.absolute()
    repo = directory / "dbb"
    if not (repo / "butler.yaml").exists():
        create_dbb(repo, n_detectors)
    insert_raws(repo, sleep)
    pipeline = directory / "pipeline.yaml"
    pipeline.write_text(pipeline_yaml([MockTask(*task, sleep=sleep) for task in PIPELINE], "pilot demo"))
    config = directory / "bps-submit.yaml"
    submission = Submission(
        pipeline=str(pipeline),
        butler=str(repo),
        in_collection=IN_COLLECTION,
        output=OUTPUT,
        labels=[label for label, _, _ in PIPELINE],
        submit_path=f"{directory}/submit/{{outputRun}}",
        run_dir=f"{directory}/runinfo",
        cores=cores,
    )
    config.write_text(submit_yaml(submission))
    before = _runs(repo)
    result = bps_submit(config, cwd=directory)
    new = sorted(_runs(repo) - before)
    output_run = new[-1] if new else None
    counts = _counts(repo, output_run) if output_run else {}
    (directory / "bps-submit.log").write_text(result.stdout)
    return BpsDemoResult(config, result.returncode, OUTPUT, output_run, counts)


def _runs(repo: Path) -> set[str]:
    with Butler.from_config(str(repo)) as butler:
        return set(butler.collections.query(f"{OUTPUT}/*"))


def _counts(repo: Path, run: str) -> dict[str, dict[str, int]]:
    with Butler.from_config(str(repo)) as butler:
        refs = butler.query_all_datasets(run, limit=None)
        names = [ref.datasetType.name for ref in refs]
    return {
        label: {
            "output": names.count(output),
            "metadata": names.count(f"{label}_metadata"),
            "log": names.count(f"{label}_log"),
        }
        for label, _, output in PIPELINE
    }
