"""Real quanta, real failures: what ``pilot run`` stages, reports and exits with."""

from __future__ import annotations

from pathlib import Path

from conftest import Campaign, TaskSpec, make_campaign, pilot, read_report

from pilot.exit_codes import ExitCode

FAILING_CHAIN = (
    TaskSpec("isr", "raw", "postISRCCD"),
    TaskSpec("calibrate", "postISRCCD", "calexp", fail_condition="detector = 2"),
    TaskSpec("measure", "calexp", "src"),
)


def test_failure_blocks_only_its_chain(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, FAILING_CHAIN, n_detectors=6)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir)
    assert result.returncode == 0, result.stderr
    (bundle,) = camp.bundle_files()  # no --max-quanta: one bundle of six chains
    workspace = tmp_path / "ws"
    result = pilot("run", "--processes", "0", bundle, "--workspace", workspace)
    assert result.returncode == ExitCode.QUANTA_FAILED, result.stderr
    report = read_report(workspace)
    assert report["status"] == "partial"
    assert report["counts"] == {"succeeded": 16, "failed": 1, "blocked": 1, "not_run": 0}
    by_key = {(q["task_label"], q["data_id"]["detector"]): q for q in report["quanta"]}
    failed = by_key["calibrate", 2]
    assert failed["status"] == "failed"
    assert failed["exception_type"] == "builtins.ValueError"
    assert failed["exception_message"].startswith("Simulated failure: task=calibrate")
    blocked = by_key["measure", 2]
    assert blocked["status"] == "blocked" and blocked["blocked_by"] == failed["quantum_id"]
    assert by_key["isr", 2]["status"] == "succeeded"
    for detector in (0, 1, 3, 4, 5):
        for label in ("isr", "calibrate", "measure"):
            quantum = by_key[label, detector]
            assert quantum["status"] == "succeeded"
            assert quantum["wall_seconds"] > 0 and quantum["max_rss_bytes"] > 0
            assert len(quantum["output_dataset_ids"]) == 3  # output, metadata, log
    assert "calibrate" in result.stdout and "TOTAL" in result.stdout

    result = pilot("ingest", camp.repo)
    assert result.returncode == 0, result.stderr
    registered = camp.datasets_in_run()
    detectors = {
        name: sorted(int(d.split("detector: ")[1].rstrip("}")) for n, d in registered if n == name)
        for name in ("postISRCCD", "calexp", "src", "calibrate_log", "calibrate_metadata", "measure_log")
    }
    assert detectors["postISRCCD"] == [0, 1, 2, 3, 4, 5]
    assert detectors["calexp"] == [0, 1, 3, 4, 5]
    assert detectors["src"] == [0, 1, 3, 4, 5]
    assert detectors["calibrate_log"] == [0, 1, 2, 3, 4, 5]  # the failure's log is kept, as pipetask does
    assert detectors["calibrate_metadata"] == [0, 1, 3, 4, 5]
    assert detectors["measure_log"] == [0, 1, 3, 4, 5]


def test_rerun_after_success_adds_no_duplicates(campaign: Campaign) -> None:
    bundle = campaign.bundle_files()[0]
    workspace = campaign.root / "ws"
    assert pilot("run", "--processes", "0", bundle, "--workspace", workspace).returncode == 0
    assert pilot("ingest", campaign.repo).returncode == 0
    first = campaign.datasets_in_run()
    assert len(first) == 18 + 4  # 6 quanta x (output, metadata, log) + 3 configs + packages

    # Same workspace: the journal shows every quantum succeeded; none runs again.
    result = pilot("run", "--processes", "0", bundle, "--workspace", workspace, "--resume")
    assert result.returncode == 0, result.stderr
    report = read_report(workspace)
    assert report["resumed_quanta"] == 6 and all(q["resumed"] for q in report["quanta"])
    # Without the journal, each quantum still finds its outputs in the workspace.
    (workspace / bundle.stem / "journal.jsonl").unlink()
    assert pilot("run", "--processes", "0", bundle, "--workspace", workspace).returncode == 0
    report = read_report(workspace)
    assert {q["caveat"] for q in report["quanta"]} == {"outputs already in workspace"}
    # Fresh workspace: recomputed, staged again, and ingest registers nothing new.
    assert pilot("run", "--processes", "0", bundle, "--workspace", campaign.root / "ws2").returncode == 0
    result = pilot("ingest", campaign.repo)
    assert result.returncode == 0, result.stderr
    assert "ingested 0 datasets (18 already present)" in result.stdout
    assert campaign.datasets_in_run() == first
    result = pilot("ingest", campaign.repo)
    assert "already ingested" in result.stdout and "the DBB is unchanged" in result.stdout
    assert campaign.datasets_in_run() == first
