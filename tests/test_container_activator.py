"""The container activator: quanta run in a real sandbox (bubblewrap) and their outputs are ingested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
from conftest import payload_campaign, pilot, read_report

from activators.base import ActivatorContext
from activators.container import ContainerActivator
from pilot.demo.probe_tasks import PayloadConfig
from pilot.errors import ConfigError
from pilot.exit_codes import ExitCode


def _bwrap_problem() -> str | None:
    """Why bubblewrap cannot run a sandbox here, or None if it can."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian package bubblewrap)"
    probe = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--", "true"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"bwrap cannot make a sandbox here: {probe.stderr.strip()}"


needs_bwrap = pytest.mark.skipif(_bwrap_problem() is not None, reason=str(_bwrap_problem()))


def _bundle(root: Path, n: int, sleep: float = 0.0, **execution: object) -> Path:
    def configure(index: int, config: PayloadConfig) -> None:
        config.payload_bytes = 1024
        config.sleep = sleep if index == 1 else 0.0

    (bundle,) = payload_campaign(root, n, "c/run", configure).bundle_files()
    doc = json.loads(bundle.read_text())
    doc["execution"].update(
        activators_by_label={"t1": "container"},
        activator_settings={"container": {"runtime": "bwrap", "inner": "in-process"}},
        **execution,
    )
    bundle.write_text(json.dumps(doc))
    return bundle


@needs_bwrap
@pytest.mark.parametrize("transient", [False, True])
def test_quanta_run_in_bwrap_and_are_ingested(tmp_path: Path, transient: bool) -> None:
    extra = {"transient_dataset_types": ["mid"]} if transient else {}
    bundle = _bundle(tmp_path, 2, **extra)
    result = pilot("run", bundle, "--workspace", tmp_path / "ws", "--processes", "1")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    report = read_report(tmp_path / "ws")
    assert {q["status"] for q in report["quanta"]} == {"succeeded"}
    # t1 ran in a child in its own PID namespace (bwrap --unshare-pid), one per quantum.
    results = sorted((tmp_path / "ws" / bundle.stem / "container").glob("*.result.json"))
    assert len(results) == 2
    ours = os.readlink("/proc/self/ns/pid")
    for path in results:
        sandbox = json.loads(path.read_text())["sandbox"]
        assert sandbox["pid_namespace"] != ours
        assert sandbox["pid"] < 10  # pid 1 is bwrap's init in the new namespace
    # t1's outputs (written inside the sandbox) are staged and ingested with t0's.
    mid = 0 if transient else 2
    assert report["stage_out"]["n_datasets"] == mid + 2 * 2 + 2 * 3
    assert pilot("ingest", tmp_path / "dbb").returncode == 0
    from lsst.daf.butler import Butler

    with Butler.from_config(str(tmp_path / "dbb")) as butler:
        names = [ref.datasetType.name for ref in butler.query_all_datasets("c/run", limit=None)]
    assert names.count("final") == 2
    assert names.count("t1_metadata") == 2
    assert names.count("mid") == mid


@needs_bwrap
def test_timeout_kills_the_sandboxed_quantum(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1, sleep=120.0, quantum_timeout_seconds=5)
    result = pilot("run", bundle, "--workspace", tmp_path / "ws", "--processes", "1")
    assert result.returncode == ExitCode.QUANTA_FAILED, result.stderr
    report = read_report(tmp_path / "ws")
    (t1,) = [q for q in report["quanta"] if q["task_label"] == "t1"]
    assert t1["status"] == "failed"
    assert "time" in (t1["exception_message"] or "")
    # Nothing of the container outlived the killed worker.
    marker = str(tmp_path / "ws")
    left = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(marker in arg for arg in (p.info["cmdline"] or []))
    ]
    assert left == []


def test_command_lines_carry_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t")
    monkeypatch.setenv("LSST_HTTP_AUTH_BEARER_TOKEN", "s3cr3t-value")
    ws = tmp_path / "area" / "b1"
    ws.mkdir(parents=True)

    def command(settings: dict) -> list[str]:
        context = ActivatorContext(butler=None, settings=settings, workspace=str(ws))  # type: ignore[arg-type]
        return ContainerActivator(context).command(tmp_path / "spec.json", ro_paths=[tmp_path / "g.qg"])

    podman = command({"runtime": "podman", "rootfs": "/", "binds": ["/data:/in:ro"]})
    assert podman[:3] == ["podman", "run", "--rm"]
    assert "--rootfs" in podman and f"{ws}:{ws}" in podman and "/data:/in:ro" in podman
    assert "LSST_HTTP_AUTH_BEARER_TOKEN" in podman
    assert not any("s3cr3t" in arg for arg in podman)
    monkeypatch.setenv("LSST_HTTP_AUTH_BEARER_TOKEN", str(token))
    bwrap = command({"runtime": "bwrap"})
    assert bwrap[0] == "bwrap" and "--die-with-parent" in bwrap
    assert bwrap[bwrap.index(str(token)) - 1] == "--ro-bind"  # the token file is bound, not read
    apptainer = command({"runtime": "apptainer", "image": "stack.sif"})
    assert "LSST_HTTP_AUTH_BEARER_TOKEN=$LSST_HTTP_AUTH_BEARER_TOKEN" in apptainer
    with pytest.raises(ConfigError, match="needs an 'image'"):
        command({"runtime": "docker"})
    with pytest.raises(ConfigError, match="unknown settings"):
        command({"runtime": "bwrap", "imgae": "x"})
