"""Glidein mode end to end: ``pilot serve`` and real ``pilot start`` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    CHAIN3,
    TOKEN,
    Campaign,
    TaskSpec,
    make_campaign,
    payload_campaign,
    pilot,
    read_report,
    serve,
    wait_for,
)
from lsst.daf.butler import Butler

from pilot.demo.probe_tasks import PayloadConfig
from pilot.exit_codes import ExitCode
from pilot.glidein.client import SchedulerClient
from pilot.protocol import StatusResponse

STARTUP_SCRIPT = Path(__file__).parent.parent / "containers" / "glidein-startup.sh"

SLOW_CHAIN = (
    TaskSpec("a", "raw", "x", sleep=0.5),
    TaskSpec("b", "x", "y", sleep=0.5),
    TaskSpec("c", "y", "z", sleep=0.5),
)


def _campaign(tmp_path: Path, tasks: tuple[TaskSpec, ...], n: int, max_quanta: int) -> Campaign:
    camp = make_campaign(tmp_path, tasks, n_detectors=n)
    result = pilot(
        "bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", str(max_quanta)
    )
    assert result.returncode == 0, result.stderr
    return camp


def _start(url: str, area: Path, *args: str) -> subprocess.Popen:
    """Start ``pilot start`` in its own session; its output goes to files (a full pipe would block it)."""
    token = area.parent / f"{area.name}.token"
    token.write_text(TOKEN + "\n")
    command = [sys.executable, "-m", "pilot.cli", "start", "--scheduler", url, "--token-file", str(token)]
    command += ["--workspace", str(area), "--keep-workspaces", "--processes", "1", *args]
    with open(f"{area}.out", "w") as out, open(f"{area}.err", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, start_new_session=True)
    proc.area = area  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.wait(timeout=600)  # a bound against hangs, not a timing assertion
    area = proc.area  # type: ignore[attr-defined]
    return proc.returncode, Path(f"{area}.out").read_text(), Path(f"{area}.err").read_text()


def _executions(*areas: Path) -> list[str]:
    """IDs of quanta that finished successfully in these work areas (from their journals)."""
    ids = []
    for area in areas:
        for journal in area.glob("*/journal.jsonl"):
            for line in journal.read_text().splitlines():
                result = json.loads(line)["result"]
                if result["status"] == "succeeded":
                    ids.append(result["quantum_id"])
    return ids


def _status(url: str) -> StatusResponse:
    client = SchedulerClient(url, TOKEN)
    try:
        return client.status()
    finally:
        client.close()


def _all_ingested(url: str, n_bundles: int) -> bool:
    status = _status(url)
    return status.bundles["done"] >= n_bundles and status.ingest.get("pending", 0) == 0


def _assert_each_dataset_once(camp: Campaign, n_quanta: int) -> None:
    registered = camp.datasets_in_run()
    assert len(registered) == len(set(registered)) == 3 * n_quanta + 4  # + 3 configs, packages


def test_two_pilots_complete_a_campaign(tmp_path: Path) -> None:
    camp = _campaign(tmp_path, SLOW_CHAIN[:1] + SLOW_CHAIN[1:], n=10, max_quanta=3)
    assert len(camp.bundle_files()) == 10
    with serve(camp.bundles_dir, camp.repo) as url:
        pilots = [_start(url, tmp_path / f"pilot{i}", "--idle-timeout", "2") for i in (1, 2)]
        outcomes = [_finish(p) for p in pilots]
        for code, stdout, stderr in outcomes:
            assert code == ExitCode.SUCCESS, stderr
            assert "no work for" in stdout
        bundles = [int(out.split(" bundles,")[0].rsplit(" ", 1)[1]) for _, out, _ in outcomes]
        assert sum(bundles) == 10 and min(bundles) >= 1  # both pilots worked
        wait_for(lambda: _all_ingested(url, 10), "every bundle ingested")
    executions = _executions(tmp_path / "pilot1", tmp_path / "pilot2")
    assert len(executions) == len(set(executions)) == 30
    _assert_each_dataset_once(camp, 30)


def _start_glidein(url: str, scratch: Path, *args: str) -> subprocess.Popen:
    """Start a pilot the production way: ``containers/glidein-startup.sh`` in a fake HTCondor slot."""
    scratch.mkdir()
    token = scratch / "pilot.token"
    token.write_text(TOKEN + "\n")
    ad = scratch / ".machine.ad"
    ad.write_text(
        f'Cpus = 1\nMemory = 4096\nDisk = 10000000\nGLIDEIN_Site = "TEST_SITE"\n'
        f"GLIDEIN_ToDie = {int(time.time()) + 86400}\n"
    )
    env = {
        **os.environ,
        "_CONDOR_SCRATCH_DIR": str(scratch),
        "_CONDOR_MACHINE_AD": str(ad),
        "PILOT_SCHEDULER_URL": url,
        "PILOT_TOKEN_FILE": str(token),
        "PILOT_BIN": str(Path(sys.executable).parent / "pilot"),
    }
    command = [str(STARTUP_SCRIPT), "--", "--keep-workspaces", *args]
    with open(scratch / "glidein.out", "w") as out, open(scratch / "glidein.err", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=scratch)
    proc.area = scratch / "glidein"  # type: ignore[attr-defined]  # glidein.out / glidein.err
    return proc


def test_sigterm_drains_and_the_other_pilot_finishes(tmp_path: Path) -> None:
    camp = _campaign(tmp_path, SLOW_CHAIN, n=4, max_quanta=12)
    (bundle,) = camp.bundle_files()
    with serve(camp.bundles_dir, camp.repo) as url:
        # The first pilot runs as in production: the glidein startup script, a machine ad.
        first = _start_glidein(url, tmp_path / "slot1", "--grace", "5", "--idle-timeout", "2")
        area1 = tmp_path / "slot1" / "pilot"
        journal = area1 / bundle.stem / "journal.jsonl"
        wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 2, "two quanta")
        first.send_signal(signal.SIGTERM)  # HTCondor signals the startup script, which forwards it
        code, stdout, stderr = _finish(first)
        assert code == ExitCode.DRAINED, stderr
        assert "drained: received SIGTERM" in stdout
        assert "1 cores, 4096 MB (machine-ad), site TEST_SITE" in stderr
        done_first = set(_executions(area1))
        assert 2 <= len(done_first) < 12

        second = _start(url, tmp_path / "pilot2", "--idle-timeout", "2")
        code, stdout, stderr = _finish(second)
        assert code == ExitCode.SUCCESS, stderr
        wait_for(lambda: _all_ingested(url, 2), "both the drained bundle and its remainder ingested")
    done_second = _executions(tmp_path / "pilot2")
    assert not done_first & set(done_second), "a finished quantum ran twice"
    assert len(done_first) + len(done_second) == 12
    _assert_each_dataset_once(camp, 12)


def test_sigkill_lease_expires_and_bundle_is_redone(tmp_path: Path) -> None:
    camp = _campaign(tmp_path, SLOW_CHAIN, n=2, max_quanta=6)
    (bundle,) = camp.bundle_files()
    with serve(camp.bundles_dir, camp.repo, "--lease-ttl", "5") as url:
        doomed = _start(url, tmp_path / "pilot1")
        journal = tmp_path / "pilot1" / bundle.stem / "journal.jsonl"
        wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 1, "a finished quantum")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=60)
        survivor = _start(url, tmp_path / "pilot2", "--idle-timeout", "8")
        code, stdout, stderr = _finish(survivor)
        assert code == ExitCode.SUCCESS, stderr
        wait_for(lambda: _all_ingested(url, 1), "the redone bundle ingested")
    assert len(_executions(tmp_path / "pilot2")) == 6  # redone whole: nothing of the killed pilot was staged
    _assert_each_dataset_once(camp, 6)


def test_wrong_token_exits_with_auth_code(tmp_path: Path) -> None:
    camp = _campaign(tmp_path, SLOW_CHAIN[:1], n=1, max_quanta=1)
    with serve(camp.bundles_dir, camp.repo) as url:
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-token\n")
        result = pilot("start", "--scheduler", url, "--token-file", wrong, "--workspace", tmp_path / "ws")
        assert result.returncode == ExitCode.AUTH_FAILED
        errors = [line for line in result.stderr.splitlines() if line.startswith("pilot: error:")]
        assert len(errors) == 1 and "refused the token" in errors[0]
        status = _status(url)
        assert status.bundles["queued"] == 1 and status.bundles["running"] == 0


def test_short_lived_pilot_gets_no_long_bundle(tmp_path: Path) -> None:
    camp = _campaign(tmp_path, SLOW_CHAIN[:1], n=1, max_quanta=1)
    (bundle,) = camp.bundle_files()
    document = json.loads(bundle.read_text())
    document["resources"] = {"cores": 1, "seconds": 3600}
    bundle.write_text(json.dumps(document))
    with serve(camp.bundles_dir, camp.repo) as url:
        proc = _start(url, tmp_path / "pilot", "--lifetime", "600", "--idle-timeout", "1")
        code, stdout, stderr = _finish(proc)
        assert code == ExitCode.SUCCESS, stderr
        assert "no work for" in stdout and ": 0 bundles" in stdout.replace("; 0 bundles", ": 0 bundles")
        assert _status(url).bundles["queued"] == 1


def _start_in_slot(url: str, scratch: Path, cores: int, *args: str) -> subprocess.Popen:
    """Start ``pilot start`` without --processes in a fake HTCondor slot; its work area is scratch/pilot."""
    scratch.mkdir()
    token = scratch / "pilot.token"
    token.write_text(TOKEN + "\n")
    ad = scratch / ".machine.ad"
    ad.write_text(f"Cpus = {cores}\nMemory = 8192\nDisk = 10000000\n")
    env = {**os.environ, "_CONDOR_SCRATCH_DIR": str(scratch), "_CONDOR_MACHINE_AD": str(ad)}
    command = [sys.executable, "-m", "pilot.cli", "start", "--scheduler", url, "--token-file", str(token)]
    command += ["--keep-workspaces", *args]
    area = scratch / "pilot"
    with open(f"{area}.out", "w") as out, open(f"{area}.err", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=scratch, start_new_session=True)
    proc.area = area  # type: ignore[attr-defined]
    return proc


def test_each_bundle_runs_with_its_execution_settings(tmp_path: Path) -> None:
    camp = _campaign(tmp_path, CHAIN3, n=3, max_quanta=3)
    files = camp.bundle_files()
    settings = [
        {"processes": 1, "memory_per_worker": "8GiB"},
        {"processes": None, "memory_per_worker": "1MiB"},  # the slot's cores; a budget nothing fits
        {"processes": 0},  # the pilot's own process: 1 worker under pilot start
    ]
    assert len(files) == len(settings)
    for path, execution in zip(files, settings, strict=True):
        document = json.loads(path.read_text())
        document["execution"].update(execution)
        path.write_text(json.dumps(document))
    with serve(camp.bundles_dir, camp.repo, "--max-attempts", "1") as url:
        proc = _start_in_slot(url, tmp_path / "slot", 2, "--idle-timeout", "2")
        code, stdout, stderr = _finish(proc)
        assert code == ExitCode.SUCCESS, stderr
        assert "2 cores, 8192 MB (machine-ad)" in stderr
        assert "running it on 1 worker" in stderr
        assert _status(url).bundles == {"queued": 0, "running": 0, "done": 2, "failed": 1, "cancelled": 0}
    one, tiny, zero = (read_report(tmp_path / "slot" / "pilot", path.stem) for path in files)
    assert one["processes"] == 1 and one["counts"]["succeeded"] == 3
    assert zero["processes"] == 1 and zero["counts"]["succeeded"] == 3
    assert tiny["processes"] == 2
    by_label = {q["task_label"]: q for q in tiny["quanta"]}
    assert by_label["isr"]["status"] == "failed"
    assert by_label["isr"]["exception_type"] == "pilot.MemoryLimitExceeded"
    assert by_label["isr"]["exception_message"].startswith("memory: worker RSS")
    assert "exceeded its budget of 2 MiB" in by_label["isr"]["exception_message"]  # its retry's
    assert "exceeded its budget of 1 MiB" in by_label["isr"]["attempts"][0]["exception_message"]
    assert by_label["calibrate"]["status"] == by_label["measure"]["status"] == "blocked"


def _probe_campaign(root: Path, n: int, fail_count_file: str) -> Campaign:
    """A t0 → t1 PayloadTask chain in one bundle; t0 fails as often as ``fail_count_file`` says."""

    def configure(index: int, config: PayloadConfig) -> None:
        config.fail_count_file = fail_count_file if index == 0 else ""

    return payload_campaign(root, n, "probe/run", configure)


def _tries(area: Path) -> dict[tuple[str, int], list[str]]:
    """Outcomes of every run of each (task, detector) in a work area, from the bundles' journals."""
    tries: dict[tuple[str, int], list[str]] = {}
    for journal in area.glob("*/journal.jsonl"):
        for line in journal.read_text().splitlines():
            result = json.loads(line)["result"]
            key = (result["task_label"], result["data_id"]["detector"])
            tries.setdefault(key, []).append(result["status"])
    return {key: sorted(outcomes) for key, outcomes in tries.items()}


def test_failed_quanta_are_retried_until_max_attempts(tmp_path: Path) -> None:
    fail_counts = tmp_path / "fail-counts"
    fail_counts.mkdir()
    (fail_counts / "0").write_text("1\n")  # detector 0's t0 fails on its first attempt only
    (fail_counts / "1").write_text("100\n")  # detector 1's t0 always fails
    camp = _probe_campaign(tmp_path, 2, str(fail_counts / "{detector}"))
    (bundle,) = camp.bundle_files()
    with serve(camp.bundles_dir, camp.repo, "--max-attempts", "3") as url:
        proc = _start(url, tmp_path / "pilot", "--idle-timeout", "2")
        code, stdout, stderr = _finish(proc)
        assert code == ExitCode.SUCCESS, stderr
        status = wait_for(lambda: (s := _status(url)).ingest["pending"] == 0 and s, "every ingest")
        # The bundle and its first remainder handed their failures on; the last attempt keeps them.
        assert status.bundles == {"queued": 0, "running": 0, "done": 2, "failed": 1, "cancelled": 0}
        assert status.ingest == {"pending": 0, "done": 3, "failed": 0}
    remainders = sorted(path.stem for path in (camp.bundles_dir / "remainders").glob("*.json"))
    assert remainders == [f"{bundle.stem}-r1", f"{bundle.stem}-r2"]
    assert _tries(tmp_path / "pilot") == {
        ("t0", 0): ["failed", "succeeded"],
        ("t1", 0): ["succeeded"],
        ("t0", 1): ["failed", "failed", "failed"],  # max_attempts tries; its t1 was blocked each time
    }
    assert (fail_counts / "1").read_text().strip() == "97"
    registered = camp.datasets_in_run()
    assert len(registered) == len(set(registered))
    outputs = sorted((name, data_id) for name, data_id in registered if name in ("mid", "final"))
    assert [name for name, _ in outputs] == ["final", "mid"]  # detector 0's, once each
    assert all("detector: 0" in data_id for _, data_id in outputs), outputs
    # The DBB holds the log of each quantum's last attempt.
    with Butler.from_config(str(camp.repo)) as butler:
        logs = {
            d: butler.get("t0_log", instrument="DemoCam", detector=d, collections="probe/run") for d in (0, 1)
        }
    assert not any("failing as" in record.message for record in logs[0])
    assert any("97 more failures to come" in record.message for record in logs[1])


def test_status_shows_the_running_bundles_progress(tmp_path: Path) -> None:
    slow = tuple(TaskSpec(spec.label, spec.input, spec.output, sleep=2.0) for spec in SLOW_CHAIN)
    camp = _campaign(tmp_path, slow, n=2, max_quanta=6)
    (bundle,) = camp.bundle_files()
    with serve(camp.bundles_dir, camp.repo, "--lease-ttl", "6") as url:
        proc = _start(url, tmp_path / "pilot", "--idle-timeout", "2")

        def progressing():  # type: ignore[no-untyped-def]
            for entry in _status(url).pilots:
                progress = entry.progress
                if progress is not None and progress.quanta_done >= 1 and progress.quanta_running == 1:
                    return entry
            return None

        seen = wait_for(progressing, "a heartbeat with quanta done and one running")
        assert seen.bundle_id == bundle.stem and seen.last_heartbeat is not None
        assert seen.progress.quanta_failed == 0 and seen.progress.quanta_done < 6
        code, stdout, stderr = _finish(proc)
        assert code == ExitCode.SUCCESS, stderr
        (after,) = _status(url).pilots
        assert after.bundle_id is None and after.progress is None


def test_heartbeats_report_a_hung_quantum(tmp_path: Path) -> None:
    """A worker SIGSTOPped in a claimed bundle: the pilot kills it, the scheduler hears of it."""
    chain = (
        TaskSpec("t0", "raw", "mid", fail_condition="detector = 0", fail_signal=signal.SIGSTOP),
        TaskSpec("t1", "mid", "final", sleep=2.0),
    )
    camp = _campaign(tmp_path, chain, n=4, max_quanta=8)
    (path,) = camp.bundle_files()
    document = json.loads(path.read_text())
    document["execution"]["hang_seconds"] = 1.5  # the bundle's setting, as pilot start takes it
    path.write_text(json.dumps(document))
    with serve(camp.bundles_dir, camp.repo, "--lease-ttl", "3", "--max-attempts", "1") as url:
        proc = _start(url, tmp_path / "p", "--idle-timeout", "2")

        def hung() -> list[str]:
            pilots = _status(url).pilots
            return pilots[0].progress.timed_out if pilots and pilots[0].progress else []

        reported = wait_for(hung, "a heartbeat naming the hung quantum")[0]  # its first hang, retried
        assert reported.startswith("t0 {'instrument': 'DemoCam', 'detector': 0}: hung: no CPU progress")
        assert reported.endswith("(retrying)")
        code, _, stderr = _finish(proc)
    assert code == ExitCode.SUCCESS, stderr  # the bundle was reported (partial); the pilot went idle
    report = read_report(tmp_path / "p", path.stem)
    assert report["counts"] == {"succeeded": 6, "failed": 1, "blocked": 1, "not_run": 0}
