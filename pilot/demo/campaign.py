"""``pilot demo``: a local DBB, a real 3-task pipeline, bundles run by the pilot, ingest, report."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from lsst.daf.butler import Butler, Config
from lsst.pipe.base.tests.mocks import (
    DirectButlerRepo,
    DynamicConnectionConfig,
    DynamicTestPipelineTaskConfig,
)

from ..central.bundling import make_bundles
from ..central.ingest import BundleIngest, ingest_committed
from ..executor.worker_pool import WorkerPool
from ..report import now
from ..runner import RunOutcome, run_bundle

_LOG = logging.getLogger(__name__)

INSTRUMENT = "DemoCam"
DIMENSIONS = ("instrument", "detector")
# (task label, input dataset type, output dataset type): a chain of three mock
# PipelineTasks from lsst.pipe.base.tests.mocks, one quantum per detector each.
PIPELINE = (
    ("isr", "raw", "postISRCCD"),
    ("calibrateImage", "postISRCCD", "calexp"),
    ("measureSources", "calexp", "sourceTable"),
)


@dataclasses.dataclass
class DemoResult:
    """Everything the demo did, for printing and for tests."""

    output_run: str
    qgraph: Path
    bundles: list[Path]
    runs: list[RunOutcome]
    ingested: list[BundleIngest]
    datasets_in_run: int


def create_dbb(root: Path, n_detectors: int, config: Config | None = None) -> None:
    """Create the demo DBB (sqlite registry, file datastore unless ``config`` says otherwise)."""
    Butler.makeRepo(str(root), config=config, forceConfigRoot=config is None)
    with Butler.from_config(str(root), writeable=True) as butler:
        butler.registry.insertDimensionData(
            "instrument",
            {
                "name": INSTRUMENT,
                "detector_max": 1000,
                "visit_max": 10**6,
                "exposure_max": 10**6,
                "visit_system": 0,
            },
        )
        butler.registry.insertDimensionData(
            "detector",
            *[{"instrument": INSTRUMENT, "id": i, "full_name": f"S{i:03d}"} for i in range(n_detectors)],
        )


def add_demo_tasks(mock_repo: DirectButlerRepo, sleep: float) -> None:
    """Add the demo pipeline's mock tasks to ``mock_repo``."""
    for label, input_type, output_type in PIPELINE:
        config = DynamicTestPipelineTaskConfig()
        config.sleep = sleep
        mock_repo.add_task(
            label,
            dimensions=DIMENSIONS,
            config=config,
            inputs={
                "input": DynamicConnectionConfig(dataset_type_name=input_type, dimensions=list(DIMENSIONS))
            },
            outputs={
                "output": DynamicConnectionConfig(dataset_type_name=output_type, dimensions=list(DIMENSIONS))
            },
        )


def build_quantum_graph(repo: Path, output_run: str, qgraph: Path, sleep: float) -> None:
    """Build and write the demo pipeline's quantum graph, inserting mock raws on first use."""
    with Butler.from_config(str(repo), writeable=True) as butler:
        mock_repo = DirectButlerRepo(butler, use_import_collections_as_input=False, data_root=None)
        add_demo_tasks(mock_repo, sleep)
        builder = mock_repo.make_quantum_graph_builder(
            output_run=output_run, register_output_dataset_types=False
        )
        components = builder.finish(output="demo", attach_datastore_records=True)
        qgraph.parent.mkdir(parents=True, exist_ok=True)
        components.write(str(qgraph))


def run_demo(
    directory: Path, *, n_detectors: int = 24, sleep: float = 0.02, max_quanta: int = 12, processes: int = 2
) -> DemoResult:
    """Run the whole demo in ``directory``; safe to run again (each run gets a new RUN collection).

    The bundles share one warm pool of ``processes`` workers, as in a glidein.
    """
    directory = directory.absolute()
    repo = directory / "dbb"
    if not (repo / "butler.yaml").exists():
        _LOG.info("Creating demo DBB at %s.", repo)
        create_dbb(repo, n_detectors)
    stamp = now().strftime("%Y%m%dT%H%M%S%f")
    output_run = f"demo/run{stamp}"
    qgraph = directory / "qgraphs" / f"run{stamp}.qg"
    build_quantum_graph(repo, output_run, qgraph, sleep)
    bundles = make_bundles(
        str(qgraph), str(repo), directory / "bundles" / f"run{stamp}", max_quanta=max_quanta
    )
    if processes > 0:
        with WorkerPool(processes) as pool:
            runs = [run_bundle(path, directory / "workspaces", pool=pool) for path in bundles]
    else:
        runs = [run_bundle(path, directory / "workspaces") for path in bundles]
    ingested = ingest_committed(str(repo))
    with Butler.from_config(str(repo)) as butler:
        n_datasets = len(butler.query_all_datasets(output_run, limit=None))
    return DemoResult(output_run, qgraph, bundles, runs, ingested, n_datasets)
