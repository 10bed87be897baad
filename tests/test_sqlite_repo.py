"""``execution.local_repo: sqlite``: the same end-to-end run as the QBB mode, over a temporary full repo."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FAILING_CHAIN, Campaign, make_campaign, pilot, read_report, registered_datasets

from pilot.exit_codes import ExitCode


def _run_and_ingest(root: Path, local_repo: str, processes: int) -> tuple[Campaign, dict]:
    """Bundle the failing 3-task chain (one bundle), run it in ``local_repo`` mode, ingest it."""
    camp = make_campaign(root, FAILING_CHAIN, n_detectors=6)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir)
    assert result.returncode == 0, result.stderr
    (bundle,) = camp.bundle_files()
    document = json.loads(bundle.read_text())
    document["execution"]["local_repo"] = local_repo
    bundle.write_text(json.dumps(document))
    workspace = root / "ws"
    result = pilot("run", "--processes", str(processes), bundle, "--workspace", workspace)
    assert result.returncode == ExitCode.QUANTA_FAILED, result.stderr
    report = read_report(workspace)
    result = pilot("ingest", camp.repo)
    assert result.returncode == 0, result.stderr
    return camp, report


def _outcomes(report: dict) -> dict[tuple[str, int], tuple[str, int]]:
    return {
        (q["task_label"], q["data_id"]["detector"]): (q["status"], len(q["output_dataset_ids"]))
        for q in report["quanta"]
    }


def test_sqlite_mode_matches_qbb(tmp_path: Path) -> None:
    qbb, qbb_report = _run_and_ingest(tmp_path / "qbb", "qbb", processes=0)
    # Two workers: each builds its own repo, and reads what the other wrote in trust mode.
    sqlite, sqlite_report = _run_and_ingest(tmp_path / "sqlite", "sqlite", processes=2)
    assert sqlite_report["status"] == "partial"
    assert sqlite_report["counts"] == {"succeeded": 16, "failed": 1, "blocked": 1, "not_run": 0}
    assert _outcomes(sqlite_report) == _outcomes(qbb_report)
    # The same datasets with the same content reach the DBB (IDs differ: two graphs).
    expected = registered_datasets(qbb.repo, qbb.output_run, with_ids=False)
    assert registered_datasets(sqlite.repo, sqlite.output_run, with_ids=False) == expected
    assert len(expected) == 53  # 16 quanta x 3 + the failure's log + 3 configs + packages
    # The temporary repos are gone with their sessions; the workspace datastore stays.
    workspace = tmp_path / "sqlite" / "ws" / sqlite_report["bundle_id"]
    assert not list(workspace.glob("sqlite-repo-*"))
    assert (workspace / "repo" / "butler.yaml").exists()
