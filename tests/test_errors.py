"""The error taxonomy as users see it: real ``pilot`` processes, one error line, one exit code per kind."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from conftest import Campaign, make_campaign, pilot
from lsst.resources import ResourcePath

import activators.registry
import stagers.registry
from pilot import errors
from pilot.errors import (
    BundleError,
    ConfigError,
    LeaseGone,
    PilotError,
    PluginError,
    PluginNotFound,
    SchedulerRejected,
    SlotError,
)
from pilot.exit_codes import MEANINGS, ExitCode


def _one_error_line(result_stderr: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("pilot: error: "), result_stderr
    return lines[0]


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_every_error_class_has_a_documented_exit_code() -> None:
    classes = [cls for cls in _all_subclasses(PilotError) if cls.__module__ == errors.__name__]
    assert len(classes) >= 13
    for cls in classes:
        assert cls.exit_code in MEANINGS, cls
    assert (
        ConfigError.exit_code == SlotError.exit_code == PluginError.exit_code == ExitCode.CONFIG_ERROR == 19
    )
    assert BundleError.exit_code == ExitCode.BAD_BUNDLE == 11
    assert SchedulerRejected.exit_code == ExitCode.SCHEDULER_REJECTED == 20
    assert LeaseGone.exit_code == ExitCode.INTERRUPTED


def test_help_lists_every_exit_code() -> None:
    result = pilot("--help")
    assert result.returncode == 0, result.stderr
    for code, meaning in MEANINGS.items():
        assert f"{int(code):>3}  {meaning}" in result.stdout


def test_bad_memory_per_worker(tmp_path: Path) -> None:
    result = pilot("run", "--processes", "0", "--memory-per-worker", "lots", tmp_path / "absent.json")
    assert result.returncode == ExitCode.CONFIG_ERROR
    line = _one_error_line(result.stderr)
    assert line.startswith("pilot: error: --memory-per-worker: 'lots' is not a memory size")


def test_bad_max_quanta(tmp_path: Path) -> None:
    result = pilot(
        "bundle", tmp_path / "g.qg", "--repo", tmp_path, "--out", tmp_path / "out", "--max-quanta", "0"
    )
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert _one_error_line(result.stderr) == "pilot: error: --max-quanta must be at least 1, not 0"
    assert not (tmp_path / "out").exists()


def test_uncreatable_workspace(tmp_path: Path) -> None:
    plain_file = tmp_path / "file"
    plain_file.write_text("not a directory\n")
    result = pilot("run", "--processes", "0", "--workspace", plain_file / "ws", tmp_path / "absent.json")
    assert result.returncode == ExitCode.CONFIG_ERROR
    line = _one_error_line(result.stderr)
    assert f"cannot create the pilot work area {plain_file / 'ws'}" in line


def test_plain_http_scheduler_refused_before_any_network_io(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    # example.invalid never resolves: reaching for it would end in 18 after retries, not 19.
    result = pilot(
        "start",
        "--scheduler",
        "http://example.invalid:1",
        "--token-file",
        token,
        "--workspace",
        tmp_path / "ws",
    )
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr
    line = _one_error_line(result.stderr)
    assert "'http://example.invalid:1'" in line and "plain http to example.invalid" in line
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("command", ["start", "serve"])
def test_empty_token_file(tmp_path: Path, command: str) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    if command == "start":
        args: tuple[str | Path, ...] = ("start", "--scheduler", "https://127.0.0.1:1", "--token-file", token)
    else:
        args = ("serve", tmp_path, "--repo", tmp_path / "dbb", "--token-file", token, "--port", "0")
    result = pilot(*args)
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr
    assert _one_error_line(result.stderr) == (
        f"pilot: error: token file {token} must hold one token (non-empty, no whitespace)"
    )


def test_missing_token_file(tmp_path: Path) -> None:
    token = tmp_path / "absent.token"
    result = pilot("start", "--scheduler", "https://127.0.0.1:1", "--token-file", token)
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr
    assert _one_error_line(result.stderr).startswith(f"pilot: error: cannot read token file {token}: ")


@pytest.mark.parametrize("command", ["run", "start"])
def test_malformed_machine_ad(tmp_path: Path, command: str) -> None:
    ad = tmp_path / ".machine.ad"
    ad.write_text("Cpus = 0\nMemory = 10\nDisk = 10\n")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = {"_CONDOR_MACHINE_AD": str(ad), "_CONDOR_SCRATCH_DIR": str(tmp_path)}
    if command == "run":
        args: tuple[str | Path, ...] = ("run", tmp_path / "absent.json")
    else:
        args = ("start", "--scheduler", "https://127.0.0.1:1", "--token-file", token)
    result = pilot(*args, env=env)
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr
    assert _one_error_line(result.stderr) == f"pilot: error: machine ad {ad}: Cpus = 0 is less than 1"


def test_unknown_plugins_raise_one_class() -> None:
    with pytest.raises(PluginError) as activator:
        activators.registry.activator_class("teleport")
    with pytest.raises(PluginError) as stager:
        stagers.registry.stager_for(ResourcePath("gs://dbb/repo/"))
    assert type(activator.value) is type(stager.value) is PluginNotFound
    assert isinstance(activator.value, ConfigError) and activator.value.exit_code == ExitCode.CONFIG_ERROR
    assert "unknown activator 'teleport'; installed: container, exec, in-process" in str(activator.value)
    assert "no stager for 'gs' URIs" in str(stager.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("no_such_module_anywhere:Plugin", "cannot be loaded: ModuleNotFoundError"),
        ("builtins:dict", "is not a"),
    ],
)
def test_broken_plugins_raise_one_class(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    def fake_entry_points(group: str) -> list[EntryPoint]:
        return [EntryPoint(name="broken", value=value, group=group)]

    monkeypatch.setattr(activators.registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(stagers.registry, "entry_points", fake_entry_points)
    stagers.registry._stagers_by_scheme.cache_clear()
    try:
        with pytest.raises(PluginError) as activator:
            activators.registry.activator_class("broken")
        with pytest.raises(PluginError) as stager:
            stagers.registry.stager_for(ResourcePath("file:///tmp/"))
    finally:
        stagers.registry._stagers_by_scheme.cache_clear()
    assert type(activator.value) is type(stager.value) is PluginError
    assert str(activator.value).startswith(f"activator plugin 'broken' ({value}) {problem}")
    assert str(stager.value).startswith(f"stager plugin 'broken' ({value}) {problem}")
    assert "\n" not in str(activator.value) + str(stager.value)


@pytest.fixture(scope="module")
def shared_campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    camp = make_campaign(tmp_path_factory.mktemp("errors"))
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    return camp


def test_run_goes_on_past_a_bad_bundle(shared_campaign: Campaign, tmp_path: Path) -> None:
    good, good2 = shared_campaign.bundle_files()[:2]
    bad = tmp_path / "bad.json"
    bad.write_text(good.read_text()[:-20])
    area = tmp_path / "ws"
    result = pilot("run", "--processes", "0", "--workspace", area, good, bad, good2)
    assert result.returncode == ExitCode.BAD_BUNDLE, result.stderr
    errors_seen = [line for line in result.stderr.splitlines() if line.startswith("pilot: error:")]
    assert len(errors_seen) == 1, result.stderr
    assert f"bundle file {bad} is not valid JSON" in errors_seen[0]
    for path in (good, good2):
        report = json.loads((area / json.loads(path.read_text())["bundle_id"] / "report.json").read_text())
        assert report["status"] == "succeeded" and report["exit_code"] == 0
    assert result.stdout.count("report: ") == 2


def test_run_names_the_bundle_file_of_a_later_error(shared_campaign: Campaign, tmp_path: Path) -> None:
    original = shared_campaign.bundle_files()[0]
    doc = json.loads(original.read_text())
    doc["qgraph"] = str(original.with_suffix(".qg"))
    doc["execution"]["activator"] = "teleport"
    unknown = tmp_path / "teleport.json"
    unknown.write_text(json.dumps(doc))
    result = pilot("run", "--processes", "0", "--workspace", tmp_path / "ws", unknown)
    assert result.returncode == ExitCode.BAD_BUNDLE
    line = _one_error_line(result.stderr)
    assert line.startswith(f"pilot: error: bundle {doc['bundle_id']}: execution.activator: ")
    assert "unknown activator 'teleport'" in line and line.endswith(f" (bundle file {unknown})")
