"""Data movement against real servers: retries, resume after a failed stage-out, corrupt
inputs, the pilot-wide input cache, a crash during stage-out, and the provenance record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    CHAIN3,
    Campaign,
    TaskSpec,
    _free_port,
    make_campaign,
    pilot,
    read_report,
    start_webdav,
    stop_process,
)

from pilot.exit_codes import ExitCode
from pilot.staging.input_cache import blake2b_of

# Keep lsst.resources' own per-request HTTP retries short, so the pilot's are what the test sees.
FAST_HTTP = {"LSST_HTTP_BACKOFF_MIN": "0.01", "LSST_HTTP_BACKOFF_MAX": "0.02"}


def _bundle_to_dav_staging(tmp_path: Path, port: int, n_detectors: int = 2) -> tuple[Campaign, Path, str]:
    """A POSIX DBB whose staging area is on a WebDAV server at ``port``; one bundle."""
    camp = make_campaign(tmp_path, CHAIN3, n_detectors=n_detectors)
    staging = f"http://127.0.0.1:{port}/staging/"
    result = pilot(
        "bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--staging", staging
    )
    assert result.returncode == 0, result.stderr
    (bundle,) = camp.bundle_files()
    _edit(bundle, staging={"retry_attempts": 3, "retry_backoff_seconds": 0.1})
    return camp, bundle, staging


def _edit(bundle: Path, **sections: dict) -> None:
    document = json.loads(bundle.read_text())
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    bundle.write_text(json.dumps(document, indent=2))


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_stage_out_retries_server_errors(tmp_path: Path) -> None:
    port = _free_port()
    camp, bundle, staging = _bundle_to_dav_staging(tmp_path, port)
    state = tmp_path / "dav-state"
    state.mkdir()
    # More failures than lsst.resources' own per-request retries absorb (6 tries).
    server = start_webdav(tmp_path / "dav", port, {"DAV_FAIL_PUTS": "8", "DAV_STATE": str(state)})
    try:
        result = pilot("run", "--processes", "0", bundle, "--workspace", tmp_path / "ws", env=FAST_HTTP)
        assert result.returncode == ExitCode.SUCCESS, result.stderr
        assert (state / "failed_puts").read_text() == "8"
        report = read_report(tmp_path / "ws")
        assert report["stage_out"]["transfer"]["retries"] >= 1
        assert result.stdout.count("retries") >= 1
        ingest = pilot("ingest", camp.repo, "--staging", staging, env=FAST_HTTP)
        assert ingest.returncode == 0, ingest.stderr
    finally:
        stop_process(server)
    assert len(camp.datasets_in_run()) == 2 * 3 * 3 + 4


def test_stage_out_fails_while_server_down_then_resumes(tmp_path: Path) -> None:
    port = _free_port()
    camp, bundle, staging = _bundle_to_dav_staging(tmp_path, port)
    # lsst.resources probes a WebDAV endpoint with its default backoff (~17 s while refused),
    # whatever LSST_HTTP_BACKOFF_* say: one retry is patience enough here.
    _edit(bundle, staging={"retry_attempts": 2})
    area = tmp_path / "ws"
    result = pilot("run", "--processes", "0", bundle, "--workspace", area, env=FAST_HTTP)  # port closed
    assert result.returncode == ExitCode.STAGE_OUT_FAILED, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pilot: error:")]
    assert len(errors) == 1 and "stage-out of bundle" in errors[0] and "gave up after 2 attempts" in errors[0]
    report = read_report(area)
    assert report["counts"]["succeeded"] == 6 and report["exit_code"] == ExitCode.STAGE_OUT_FAILED
    outputs = _mtimes(area / bundle.stem / "repo" / "test")
    assert len(outputs) == 6 * 3

    server = start_webdav(tmp_path / "dav", port)
    try:
        result = pilot("run", "--processes", "0", bundle, "--workspace", area, "--resume", env=FAST_HTTP)
        assert result.returncode == ExitCode.SUCCESS, result.stderr
        report = read_report(area)
        assert report["resumed_quanta"] == 6 and all(q["resumed"] for q in report["quanta"])
        assert report["stage_out"]["n_datasets"] == 18
        assert _mtimes(area / bundle.stem / "repo" / "test") == outputs  # nothing recomputed
        assert pilot("ingest", camp.repo, "--staging", staging, env=FAST_HTTP).returncode == 0
    finally:
        stop_process(server)
    assert len(camp.datasets_in_run()) == 18 + 4


def test_resume_needs_a_journal(campaign: Campaign, tmp_path: Path) -> None:
    bundle = campaign.bundle_files()[0]
    result = pilot("run", "--processes", "0", bundle, "--workspace", tmp_path / "ws", "--resume")
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert result.stderr.startswith("pilot: error: nothing to resume: workspace")


def test_corrupt_input_is_refetched_then_fails(campaign: Campaign, tmp_path: Path) -> None:
    raws = sorted((campaign.repo / "input_run" / "raw").glob("raw_*"))
    assert len(raws) == 6
    for raw in raws:  # the DBB's records no longer match its files
        with open(raw, "ab") as stream:
            stream.write(b"corrupted")
    result = pilot("run", "--processes", "0", campaign.bundle_files()[0], "--workspace", tmp_path / "ws")
    assert result.returncode == ExitCode.STAGE_IN_FAILED, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "(attempt 1)" in result.stderr  # refetched once
    assert lines[-1].startswith("pilot: error: input raw@{instrument: 'DemoCam', detector: ")
    assert "bytes, the DBB recorded" in lines[-1] and "after refetching" in lines[-1]
    assert not campaign.staging.exists()
    assert not list((tmp_path / "ws").glob("*/report.json"))


def test_bundles_of_one_pilot_share_the_input_cache(tmp_path: Path) -> None:
    tasks = (TaskSpec("isr", "raw", "postISRCCD", shared_input="bias"), *CHAIN3[1:])
    camp = make_campaign(tmp_path, tasks, n_detectors=4)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    first, second = camp.bundle_files()
    area = tmp_path / "ws"
    result = pilot("run", "--processes", "0", first, second, "--workspace", area)
    assert result.returncode == 0, result.stderr
    one, two = read_report(area, first.stem), read_report(area, second.stem)
    # Each bundle reads 2 raws and the bias; the second finds the bias in the cache.
    assert one["stage_in"]["files"] == 3 and one["stage_in"]["cache_hits"] == 0
    assert two["stage_in"]["files"] == 2 and two["stage_in"]["cache_hits"] == 1
    cached = [p for p in (area / "input-cache").rglob("bias_*.json")]
    # One inode: the DBB file (the file stager links on one filesystem), the cache, two workspaces.
    assert len(cached) == 1 and cached[0].stat().st_nlink == 4
    assert pilot("ingest", camp.repo).returncode == 0
    assert len(camp.datasets_in_run()) == 4 * 3 * 3 + 4


def test_crash_during_stage_out_leaves_no_partial_bundle(tmp_path: Path) -> None:
    port = _free_port()
    camp, bundle, staging = _bundle_to_dav_staging(tmp_path, port)
    state = tmp_path / "dav-state"
    state.mkdir()
    server = start_webdav(tmp_path / "dav", port, {"DAV_STALL_ZIP_PUT": "1", "DAV_STATE": str(state)})
    area = tmp_path / "ws"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pilot.cli", "run", str(bundle), "--workspace", str(area)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **FAST_HTTP},
        )
        deadline = time.monotonic() + 300  # a bound on waiting, not an assertion on speed
        while not (state / "zip_put_started").exists():
            assert proc.poll() is None, "the pilot ended before uploading its zip"
            assert time.monotonic() < deadline, "the zip upload never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop_process(server)

    server = start_webdav(tmp_path / "dav", port)
    try:
        result = pilot("ingest", camp.repo, "--staging", staging, env=FAST_HTTP)
        assert result.returncode == 0, result.stderr
        assert "no committed bundles found" in result.stdout
        assert len(camp.datasets_in_run()) == 4  # only the init-outputs `pilot bundle` wrote

        result = pilot("run", "--processes", "0", bundle, "--workspace", area, "--resume", env=FAST_HTTP)
        assert result.returncode == ExitCode.SUCCESS, result.stderr
        assert read_report(area)["resumed_quanta"] == 6
        for _ in range(2):
            assert pilot("ingest", camp.repo, "--staging", staging, env=FAST_HTTP).returncode == 0
    finally:
        stop_process(server)
    registered = camp.datasets_in_run()
    assert len(registered) == len(set(registered)) == 18 + 4


def test_provenance_record(campaign: Campaign, tmp_path: Path) -> None:
    bundle = campaign.bundle_files()[0]
    area = tmp_path / "ws"
    ad = tmp_path / "machine.ad"  # as a glidein's slot would have it
    ad.write_text('Cpus = 1\nMemory = 4096\nDisk = 10000000\nGLIDEIN_Site = "TEST_SITE"\n')
    result = pilot("run", bundle, "--workspace", area, env={"_CONDOR_MACHINE_AD": str(ad)})
    assert result.returncode == 0, result.stderr
    manifest = json.loads((campaign.staging / bundle.stem / "manifest.json").read_text())
    provenance = json.loads((campaign.staging / bundle.stem / manifest["provenance"]).read_text())
    report = read_report(area)
    assert report["processes"] == 1  # the machine ad's Cpus
    assert provenance["site"] == "TEST_SITE"
    assert provenance["host"] == report["host"] and provenance["software"] == report["software"]
    assert len(provenance["quanta"]) == 6
    repo = area / bundle.stem / "repo"
    for quantum in provenance["quanta"]:
        assert quantum["status"] == "succeeded" and quantum["inputs"] and quantum["outputs"]
        for item in quantum["inputs"] + quantum["outputs"]:
            run = item["run"].replace("/", "_")
            name = f"{item['dataset_type']}_DemoCam_S{item['data_id']['detector']:03d}_{run}.json"
            path = repo / item["run"] / item["dataset_type"] / name
            assert item["size"] == path.stat().st_size and item["blake2b"] == blake2b_of(path), item


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ({"env": "PILOT_TEST_NO_SUCH_TOKEN"}, "token variable $PILOT_TEST_NO_SUCH_TOKEN is not set"),
        ({"file": "/nonexistent/token"}, "cannot read the bundle's DBB token file /nonexistent/token"),
    ],
)
def test_missing_token(campaign: Campaign, tmp_path: Path, token: dict, expected: str) -> None:
    bundle = campaign.bundle_files()[0]
    _edit(bundle, dbb={"token": token})
    result = pilot("run", "--processes", "0", bundle, "--workspace", tmp_path / "ws")
    assert result.returncode == ExitCode.STAGE_IN_FAILED
    assert result.stderr.strip().splitlines() == [
        f"pilot: error: {result.stderr.split('error: ')[1].strip()}"
    ]
    assert expected in result.stderr


def _tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (what a site's CA bundle would vouch for)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_token_by_reference_reaches_https_storage(tmp_path: Path) -> None:
    cert, key = _tls_certificate(tmp_path)
    port = _free_port()
    camp = make_campaign(tmp_path, CHAIN3, n_detectors=2)
    staging = f"https://127.0.0.1:{port}/staging/"
    out = camp.bundles_dir
    assert (
        pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", out, "--staging", staging).returncode == 0
    )
    (bundle,) = camp.bundle_files()
    token_file = tmp_path / "dbb.token"
    token_file.write_text("right-token\n")
    token_file.chmod(0o600)
    _edit(bundle, dbb={"token": {"file": str(token_file)}}, staging={"retry_attempts": 1})
    assert "right-token" not in bundle.read_text()  # the bundle holds a reference, never the token
    # requests lets REQUESTS_CA_BUNDLE (set on many machines) override LSST_HTTP_CACERT_BUNDLE.
    env = {**FAST_HTTP, "LSST_HTTP_CACERT_BUNDLE": str(cert), "REQUESTS_CA_BUNDLE": str(cert)}
    faults = {"DAV_TLS_CERT": str(cert), "DAV_TLS_KEY": str(key), "DAV_BEARER_TOKEN": "right-token"}
    server = start_webdav(tmp_path / "dav", port, faults)
    try:
        token_file.chmod(0o644)
        result = pilot("run", "--processes", "0", bundle, "--workspace", tmp_path / "ws0", env=env)
        assert result.returncode == ExitCode.STAGE_IN_FAILED
        assert "must be readable by its owner only" in result.stderr.strip().splitlines()[-1]

        token_file.write_text("wrong-token\n")
        token_file.chmod(0o600)
        result = pilot("run", "--processes", "0", bundle, "--workspace", tmp_path / "ws1", env=env)
        assert result.returncode == ExitCode.STAGE_OUT_FAILED, result.stderr
        assert "401" in result.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "dav" / "staging" / bundle.stem / "manifest.json").exists()

        token_file.write_text("right-token\n")
        result = pilot(
            "run", "--processes", "0", bundle, "--workspace", tmp_path / "ws1", "--resume", env=env
        )
        assert result.returncode == ExitCode.SUCCESS, result.stderr
        assert (tmp_path / "dav" / "staging" / bundle.stem / "manifest.json").exists()
        central = {**env, "LSST_HTTP_AUTH_BEARER_TOKEN": str(token_file)}
        assert pilot("ingest", camp.repo, "--staging", staging, env=central).returncode == 0
    finally:
        stop_process(server)
    assert len(camp.datasets_in_run()) == 18 + 4
