"""Stage-out writes each byte once: files placed as quanta finish, linked, committed at the end."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from conftest import TaskSpec, make_campaign, pilot, read_report, start_run

from pilot.exit_codes import ExitCode

# One worker: a0, b0, a1, b1, ... in turn; each b sleeps, so the first chains finish long
# before the bundle does.
SLOW_B = (TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y", sleep=3.0))


def _attempt_files(staging: Path) -> list[Path]:
    return sorted(staging.glob("*/attempt-*/files/*"))


def test_files_are_placed_while_chains_compute_and_killed_runs_leave_nothing_ingestable(
    tmp_path: Path,
) -> None:
    run = start_run(tmp_path, SLOW_B, "--processes", "1")
    staging = run.camp.staging
    # The first chain's files reach the staging area while later chains still run...
    run.wait_for(lambda: any("b_log" in p.name for p in _attempt_files(staging)), "b0's files in staging")
    assert run.proc.poll() is None
    assert not list(staging.glob("*/manifest.json"))  # ...but nothing is committed before the end
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(timeout=60)

    result = pilot("ingest", run.camp.repo)
    assert result.returncode == 0 and "no committed bundles" in result.stdout

    (bundle,) = run.camp.bundle_files()
    result = pilot("run", bundle, "--workspace", run.workspace, "--processes", "1")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    report = read_report(run.workspace)
    assert report["stage_out"]["n_datasets"] == 8 * 3  # output, metadata and log of 8 quanta
    assert report["stage_out"]["files"] is not None and report["stage_out"]["zip"] is None
    result = pilot("ingest", run.camp.repo)
    assert result.returncode == 0, result.stderr
    names = [name for name, _ in run.camp.datasets_in_run() if not name.endswith(("_config", "packages"))]
    assert sorted(set(names)) == ["a_log", "a_metadata", "b_log", "b_metadata", "x", "y"]
    assert len(names) == 24  # each dataset registered once


def test_one_inode_from_workspace_to_dbb(tmp_path: Path) -> None:
    """On one filesystem an output is written once: workspace, staging area and DBB share its inode."""
    camp = make_campaign(tmp_path, (TaskSpec("a", "raw", "x"),), n_detectors=2)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    result = pilot("run", bundle, "--workspace", workspace)
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    assert pilot("ingest", camp.repo).returncode == 0

    (manifest_path,) = camp.staging.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["zip"] is None and manifest["files"].endswith("/files")
    staged = sorted((manifest_path.parent / manifest["files"]).iterdir())
    assert "_butler_zip_index.json" in [p.name for p in staged]
    outputs = sorted(
        p for p in (workspace / bundle.stem / "repo" / "test" / "run1").rglob("*") if p.is_file()
    )
    in_dbb = sorted(
        p
        for p in (camp.repo / "test" / "run1").rglob("*")
        if p.is_file() and not p.parent.name.endswith(("_config", "packages"))  # init-outputs: central
    )
    assert len(outputs) == len(in_dbb) == 6  # x, metadata and log of 2 quanta
    staged_inodes = {p.stat().st_ino for p in staged}
    for workspace_file, dbb_file in zip(outputs, in_dbb, strict=True):
        assert workspace_file.name == dbb_file.name
        assert workspace_file.stat().st_ino == dbb_file.stat().st_ino
        assert workspace_file.stat().st_ino in staged_inodes
        assert workspace_file.stat().st_nlink == 3

    provenance = json.loads((manifest_path.parent / manifest["provenance"]).read_text())
    digests = [out["blake2b"] for quantum in provenance["quanta"] for out in quantum["outputs"]]
    assert len(digests) == 6 and all(digests)  # hashed once, by the workers
