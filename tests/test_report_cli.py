"""``pilot report`` offline (staging area) and online (``pilot serve``), and ``pilot run``'s progress line."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from conftest import FAILING_CHAIN, TOKEN, make_campaign, pilot, serve, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_glidein import _finish, _start

from pilot.glidein.client import SchedulerClient

EXPECTED = {  # 4 detectors; calibrate fails on detector 2, so measure is blocked there
    "isr": {"succeeded": 4, "failed": 0, "blocked": 0, "not_run": 0, "running": 0, "queued": 0},
    "calibrate": {"succeeded": 3, "failed": 1, "blocked": 0, "not_run": 0, "running": 0, "queued": 0},
    "measure": {"succeeded": 3, "failed": 0, "blocked": 1, "not_run": 0, "running": 0, "queued": 0},
}


def _report_json(*args: str | Path) -> dict:
    result = pilot("report", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_report_offline_and_online_agree(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, FAILING_CHAIN, n_detectors=4)
    bundled = pilot(
        "bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6"
    )
    assert bundled.returncode == 0, bundled.stderr
    with serve(camp.bundles_dir, camp.repo, "--max-attempts", "1", "--retry-after", "1") as url:
        token = tmp_path / "report.token"
        token.write_text(TOKEN + "\n")
        queued = _report_json("--scheduler", url, "--token-file", token)
        assert sum(t["queued"] for t in queued["tasks"].values()) == 12
        code, _, stderr = _finish(_start(url, tmp_path / "pilot1", "--idle-timeout", "2"))
        assert code == 0, stderr  # its failed quantum is reported, not the pilot's failure

        def finished() -> bool:
            client = SchedulerClient(url, TOKEN)
            try:
                bundles = client.status().bundles
            finally:
                client.close()
            return bundles["queued"] == bundles["running"] == 0

        wait_for(finished, "every bundle finished")
        online = _report_json("--scheduler", url, "--token-file", token)
        text = pilot("report", "--scheduler", url, "--token-file", token, "--bundles")
        metrics = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    # /metrics counts the campaign per task as the report does.
    per_task = {
        (sample.labels["task"], sample.labels["state"]): sample.value
        for family in text_string_to_metric_families(metrics.text)
        if family.name == "pilot_task_quanta"
        for sample in family.samples
    }
    assert {
        task: {state: int(per_task[task, state]) for state in counts}
        for task, counts in online["tasks"].items()
    } == online["tasks"]
    offline = _report_json("--repo", camp.repo)
    assert offline["tasks"] == EXPECTED
    assert online["tasks"] == offline["tasks"]
    assert online["failed"] == offline["failed"]
    (failure,) = offline["failed"]
    assert failure["task_label"] == "calibrate" and failure["data_id"]["detector"] == 2
    assert failure["exception_type"] and failure["exception_message"]
    assert failure["log"] == {
        "dataset_type": "calibrate_log",
        "data_id": failure["data_id"],
        "run": camp.output_run,
    }
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(line.split()[:4] == ["calibrate", "3", "1", "0"] for line in lines), text.stdout
    assert "Bundle" in text.stdout and failure["exception_type"] in text.stdout
    assert "calibrate_log" in text.stdout
    human = pilot("report", "--staging", camp.staging)
    assert human.returncode == 0 and "Failed quanta (1)" in human.stdout, human.stdout + human.stderr


def test_report_needs_a_source(tmp_path: Path) -> None:
    result = pilot("report", env={"PILOT_SCHEDULER_URL": ""})
    assert result.returncode != 0 and "--staging" in result.stderr


def _run_shown(camp_dir: Path, bundle: Path, tty: bool) -> str:
    """``pilot run`` of ``bundle``, under ``script`` (a pseudo-terminal) if ``tty``; its stderr."""
    command = [sys.executable, "-m", "pilot.cli", "run", str(bundle), "--workspace", str(camp_dir / "work")]
    if tty:
        command = ["script", "-qec", shlex.join(command) + " 2>&1", "/dev/null"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return result.stdout if tty else result.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")
def test_run_shows_progress_only_on_a_terminal(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, FAILING_CHAIN, n_detectors=2)
    bundled = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir)
    assert bundled.returncode == 0, bundled.stderr
    (bundle,) = camp.bundle_files()
    shown = _run_shown(tmp_path / "tty", bundle, tty=True)
    assert "\x1b[K" in shown and "[execute" in shown and "done," in shown, shown
    assert "calibrate" in shown.split("[execute", 1)[1], shown
    quiet = _run_shown(tmp_path / "pipe", bundle, tty=False)
    assert "\x1b[K" not in quiet and "[execute" not in quiet, quiet


def test_each_quantum_counts_once_across_attempts() -> None:
    from datetime import UTC, datetime

    from pilot.monitor.campaign import CampaignBuilder
    from pilot.report import BundleReport, QuantumResult, TransferStats

    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def report(bundle_id: str, statuses: dict[uuid.UUID, str]) -> BundleReport:
        quanta = [
            QuantumResult(quantum_id=q, task_label="t", data_id={"detector": i}, status=s, exception_type="E")  # type: ignore[arg-type]
            for i, (q, s) in enumerate(statuses.items())
        ]
        now = datetime.now(UTC)
        return BundleReport(
            bundle_id=bundle_id, output_run="run", status="partial", exit_code=1, counts={}, tasks={},
            started_at=now, ended_at=now, wall_seconds=0, host="h", platform="p", python="3",
            software={}, workspace="w", stage_in=TransferStats(), quanta=quanta,
        )  # fmt: skip

    builder = CampaignBuilder("test")
    builder.add_report(report("b-r1", {a: "succeeded", b: "failed"}), "2")  # the retry, committed later
    builder.add_report(report("b", {a: "failed", b: "failed", c: "failed"}), "1")
    builder.add_pending("b-r2", "queued", {c: "t"})
    built = builder.build()
    assert built.tasks["t"].model_dump() == {
        "succeeded": 1, "failed": 1, "blocked": 0, "not_run": 0, "running": 0, "queued": 1,
    }  # fmt: skip
    assert [(f.quantum_id, f.bundle_id) for f in built.failed] == [(b, "b-r1")]
