"""The ``exec`` activator: a legacy program as one step of a chain, through bundle → run → ingest."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Campaign, pilot, read_report
from lsst.daf.butler import Butler, DatasetRef, DatasetType, FileDataset
from lsst.pipe.base import QuantumAttemptStatus
from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder
from lsst.pipe.base.pipeline_graph import PipelineGraph
from lsst.pipe.base.quantum_graph import ProvenanceQuantumGraphReader

from activators.exec import ExecSettingsError, check_settings, render
from pilot.central.provenance_graph import graph_uri
from pilot.demo.campaign import create_dbb
from pilot.demo.probe_tasks import FitsImageFormatter, PayloadConfig, PayloadTask

FITS_FORMATTER = "pilot.demo.probe_tasks.FitsImageFormatter"

LEGACY = '''\
"""A legacy reduction program: reads a raw FITS image, writes a product FITS image."""
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

raw, product, detector, fail = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(f"legacy: reducing detector {detector}")
if len(sys.argv) > 5:  # park: write our pid and sleep (the worker-death test)
    Path(sys.argv[5]).write_text(str(__import__("os").getpid()))
    time.sleep(600)
if detector == fail:
    print(f"legacy: detector {detector} is bad", file=sys.stderr)
    sys.exit(3)
with fits.open(raw) as hdus:
    data = np.array(hdus[0].data)
fits.PrimaryHDU(data * 2 + detector).writeto(product)
'''


def legacy_campaign(root: Path, n: int) -> Campaign:
    """A DBB of ``n`` FITS raws and a graph ``legacy`` (raw → product) → ``t1`` (product → final)."""
    repo = root / "dbb"
    create_dbb(repo, n)
    with Butler.from_config(str(repo), writeable=True, run="raw/run") as butler:
        raw = DatasetType("raw", ["instrument", "detector"], "NumpyArray", universe=butler.dimensions)
        butler.registry.registerDatasetType(raw)
        for detector in range(n):
            from astropy.io import fits

            path = root / f"raw_{detector}.fits"
            fits.PrimaryHDU(np.full(16, 10.0 + detector)).writeto(path)
            data_id = butler.registry.expandDataId(instrument="DemoCam", detector=detector)
            ref = DatasetRef(raw, data_id, run="raw/run")
            butler.ingest(FileDataset(str(path), [ref], formatter=FitsImageFormatter), transfer="copy")
        pipeline = PipelineGraph()
        for label, (source, target) in [("legacy", ("raw", "product")), ("t1", ("product", "final"))]:
            config = PayloadConfig()
            config.connections.inputName = source
            config.connections.outputName = target
            pipeline.add_task(label, PayloadTask, config)
        builder = AllDimensionsQuantumGraphBuilder(
            pipeline, butler, input_collections=["raw/run"], output_run="legacy/run"
        )
        builder.finish(attach_datastore_records=True).write(str(root / "graph.qg"))
    (root / "legacy.py").write_text(LEGACY)
    return Campaign(root, repo, root / "graph.qg", "legacy/run")


def execution_file(camp: Campaign, *extra_args: str, **execution: object) -> Path:
    argv = [sys.executable, str(camp.root / "legacy.py"), "{input[raw]}", "{output[product]}"]
    argv += ["{data_id[detector]}", *extra_args]
    path = camp.root / "execution.yaml"
    settings = {"commands": {"legacy": {"argv": argv, "formatters": {"product": FITS_FORMATTER}}}}
    document = {"activators_by_label": {"legacy": "exec"}, "activator_settings": {"exec": settings}}
    path.write_text(yaml.safe_dump({**document, **execution}))
    return path


def bundle(camp: Campaign, execution: Path) -> Path:
    result = pilot(
        "bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--execution", execution
    )
    assert result.returncode == 0, result.stderr
    (path,) = camp.bundle_files()
    return path


def test_legacy_step_chained_with_pipeline_tasks(tmp_path: Path) -> None:
    camp = legacy_campaign(tmp_path, 3)
    path = bundle(camp, execution_file(camp, "1"))  # the program fails on detector 1
    assert json.loads(path.read_text())["execution"]["activators_by_label"] == {"legacy": "exec"}
    run = pilot("run", path, "--workspace", tmp_path / "ws")
    assert run.returncode != 0, run.stderr  # one quantum failed
    quanta = {(q["task_label"], q["data_id"]["detector"]): q for q in read_report(tmp_path / "ws")["quanta"]}
    failed = quanta["legacy", 1]
    assert failed["status"] == "failed"
    assert "exec command of 'legacy' exited with code 3" in failed["exception_message"]
    assert "legacy: detector 1 is bad" in failed["exception_message"]
    assert quanta["t1", 1]["status"] == "blocked"
    assert all(quanta[label, d]["status"] == "succeeded" for label in ("legacy", "t1") for d in (0, 2))

    result = pilot("ingest", camp.repo)
    assert result.returncode == 0, result.stderr
    with Butler.from_config(str(camp.repo), collections=[camp.output_run]) as butler:
        present = {
            (ref.datasetType.name, ref.dataId.required.get("detector"))
            for ref in butler.query_all_datasets(camp.output_run, limit=None)
        }
        for detector in (0, 2):
            product = butler.get("product", instrument="DemoCam", detector=detector)
            np.testing.assert_array_equal(product, np.full(16, 2 * (10.0 + detector) + detector))
            # t1, a PipelineTask, read the legacy product: its output is product[0] + 1.
            final = butler.get("final", instrument="DemoCam", detector=detector)
            assert final[0] == 2 * (10.0 + detector) + detector + 1
            metadata = butler.get("legacy_metadata", instrument="DemoCam", detector=detector)
            assert metadata["exec"]["exit_code"] == 0 and metadata["exec"]["max_rss_bytes"] > 0
            log = [r.message for r in butler.get("legacy_log", instrument="DemoCam", detector=detector)]
            assert f"stdout: legacy: reducing detector {detector}" in log and "exec: exit code 0" in log
        failed_log = [r.message for r in butler.get("legacy_log", instrument="DemoCam", detector=1)]
        assert "stderr: legacy: detector 1 is bad" in failed_log and failed_log[-1] == "exec: exit code 3"
    assert (
        ("product", 1) not in present
        and ("final", 1) not in present
        and ("legacy_metadata", 1) not in present
    )
    assert {("product", 0), ("product", 2), ("final", 0), ("final", 2), ("legacy_log", 1)} <= present

    # Provenance: the stack's graph built at ingest sees the exec quanta like any other.
    with ProvenanceQuantumGraphReader.open(graph_uri(str(camp.repo), camp.output_run).ospath) as reader:
        reader.read_full_graph()
        nodes = reader.graph.quantum_only_xgraph.nodes
    for key, quantum in quanta.items():
        info = nodes[uuid.UUID(quantum["quantum_id"])]
        if key == ("legacy", 1):
            assert info["status"] is QuantumAttemptStatus.FAILED
            assert info["exception"].message == failed["exception_message"]
        elif key[0] == "legacy":
            assert info["status"] is QuantumAttemptStatus.SUCCESSFUL
            assert info["resource_usage"].memory > 0


def test_worker_killed_for_time_kills_the_command(tmp_path: Path) -> None:
    camp = legacy_campaign(tmp_path, 1)
    pid_file = tmp_path / "legacy.pid"
    execution = execution_file(camp, "-1", str(pid_file), quantum_timeout_seconds=3, retries=0)
    run = pilot("run", bundle(camp, execution), "--processes", "1", "--workspace", tmp_path / "ws")
    assert run.returncode != 0
    (legacy,) = [q for q in read_report(tmp_path / "ws")["quanta"] if q["task_label"] == "legacy"]
    assert legacy["status"] == "failed" and "timeout" in legacy["exception_message"], legacy
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 30  # a bound on the kernel delivering the signal, not a timing check
    while _alive(pid):
        assert time.monotonic() < deadline, f"the command (pid {pid}) outlived its killed worker"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


def test_bad_template_fails_bundling(tmp_path: Path) -> None:
    path = tmp_path / "execution.yaml"
    settings = {"commands": {"legacy": {"argv": ["prog", "{inptu[raw]}"]}}}
    path.write_text(
        yaml.safe_dump({"activators_by_label": {"legacy": "exec"}, "activator_settings": {"exec": settings}})
    )
    result = pilot(
        "bundle", tmp_path / "none.qg", "--repo", tmp_path, "--out", tmp_path / "b", "--execution", path
    )
    assert result.returncode != 0
    assert (
        "commands.legacy.argv: bad template '{inptu[raw]}': unknown placeholder {inptu[raw]}" in result.stderr
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["p", "{input}"], "write {input} as {input[NAME]}"),
        (["p", "{workspace[x]}"], "write {workspace[x]} as {workspace}"),
        (["p", "{input[raw"], "bad template"),
        (["p", "{}"], "an empty placeholder"),
    ],
)
def test_template_checks(argv: list[str], message: str) -> None:
    with pytest.raises(ExecSettingsError, match=message.replace("[", r"\[").replace("{", r"\{")):
        check_settings({"commands": {"t": {"argv": argv}}})


def test_render_expands_lists_and_names_missing_keys() -> None:
    values = {"input": {"raw": ["/a", "/b"]}, "output": {"p": ["/o"]}, "data_id": {"detector": 7}}
    argv = ["p", "{input[raw]}", "--out={output[p]}", "ccd{data_id[detector]:03d}"]
    assert render(argv, values, "t") == ["p", "/a", "/b", "--out=/o", "ccd007"]
    with pytest.raises(ExecSettingsError, match="names 2 datasets"):
        render(["--in={input[raw]}"], values, "t")
    with pytest.raises(ExecSettingsError, match=r"'calexp' is not among the quantum's input \(raw\)"):
        render(["{input[calexp]}"], values, "t")
    assert os.sep in render(["{output[p]}"], values, "t")[0]
