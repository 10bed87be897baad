"""Shared fixtures: real butler repositories, real mock PipelineTasks, the real ``pilot`` CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from lsst.daf.butler import Butler
from lsst.pipe.base.tests.mocks import (
    DirectButlerRepo,
    DynamicConnectionConfig,
    DynamicTestPipelineTaskConfig,
)

from pilot.demo import create_dbb

DIMENSIONS = ("instrument", "detector")


@dataclasses.dataclass
class TaskSpec:
    """One mock PipelineTask of a test pipeline (one quantum per detector)."""

    label: str
    input: str
    output: str
    fail_condition: str = ""
    fail_signal: int | None = None
    sleep: float = 0.0


CHAIN3 = (
    TaskSpec("isr", "raw", "postISRCCD"),
    TaskSpec("calibrate", "postISRCCD", "calexp"),
    TaskSpec("measure", "calexp", "src"),
)


def build_graph(repo: Path, output_run: str, qgraph: Path, tasks: Sequence[TaskSpec]) -> Path:
    """Build and write a quantum graph (with datastore records) of ``tasks`` over ``repo``."""
    with Butler.from_config(str(repo), writeable=True) as butler:
        mock_repo = DirectButlerRepo(butler, use_import_collections_as_input=False, data_root=None)
        for spec in tasks:
            config = DynamicTestPipelineTaskConfig()
            config.sleep = spec.sleep
            config.fail_condition = spec.fail_condition
            config.fail_signal = spec.fail_signal
            mock_repo.add_task(
                spec.label,
                dimensions=DIMENSIONS,
                config=config,
                inputs={
                    "input": DynamicConnectionConfig(
                        dataset_type_name=spec.input, dimensions=list(DIMENSIONS)
                    )
                },
                outputs={
                    "output": DynamicConnectionConfig(
                        dataset_type_name=spec.output, dimensions=list(DIMENSIONS)
                    )
                },
            )
        builder = mock_repo.make_quantum_graph_builder(
            output_run=output_run, register_output_dataset_types=False
        )
        components = builder.finish(output=output_run.split("/")[0], attach_datastore_records=True)
        qgraph.parent.mkdir(parents=True, exist_ok=True)
        components.write(str(qgraph))
    return qgraph


@dataclasses.dataclass
class Campaign:
    """A DBB, a graph over it, and the directories the pilot uses."""

    root: Path
    repo: Path
    qgraph: Path
    output_run: str

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def staging(self) -> Path:
        return self.repo / "pilot-staging"

    def bundle_files(self) -> list[Path]:
        return sorted(self.bundles_dir.glob("*.json"))

    def datasets_in_run(self) -> list[tuple[str, str]]:
        """(dataset type, data ID) of every dataset registered in the output run."""
        with Butler.from_config(str(self.repo)) as butler:
            refs = butler.query_all_datasets(self.output_run, limit=None)
            return sorted((ref.datasetType.name, str(ref.dataId.required)) for ref in refs)


def make_campaign(
    root: Path, tasks: Sequence[TaskSpec] = CHAIN3, n_detectors: int = 6, run: str = "test/run1"
) -> Campaign:
    """Create a DBB with ``n_detectors`` detectors and a quantum graph of ``tasks``."""
    repo = root / "dbb"
    create_dbb(repo, n_detectors)
    qgraph = build_graph(repo, run, root / "graph.qg", tasks)
    return Campaign(root, repo, qgraph, run)


def pilot(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real ``pilot`` command in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "pilot.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def read_report(workspace: Path) -> dict:
    """Load a workspace's report.json."""
    return json.loads((workspace / "report.json").read_text())


@pytest.fixture
def campaign(tmp_path: Path) -> Campaign:
    """A 6-detector, 3-task campaign, bundled two chains per bundle."""
    camp = make_campaign(tmp_path)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    return camp
