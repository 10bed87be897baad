"""Malformed bundles: one line naming the problem, the bad-bundle exit code, nothing written to the DBB."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import Campaign, make_campaign, pilot

from pilot.bundle_model import SCHEMA_PATH, json_schema
from pilot.exit_codes import ExitCode


def test_shipped_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == json_schema(), "run: python -m pilot.bundle_model"


@pytest.fixture(scope="module")
def shared_campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    """One bundled campaign for every test here: none of them may write to it."""
    camp = make_campaign(tmp_path_factory.mktemp("bad-input"))
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    return camp


def _breakers(tmp: Path) -> dict[str, tuple[object, str]]:
    return {
        "bad_json": (lambda text: text[:-20], "is not valid JSON"),
        "missing_field": (lambda doc: doc.pop("dbb"), "missing field 'dbb'"),
        "unknown_field": (lambda doc: doc.update(priority=3), "unknown field 'priority'"),
        "bad_value": (lambda doc: doc["execution"].update(processes=-1), "field 'execution.processes'"),
        "qgraph_missing": (lambda doc: doc.update(qgraph=str(tmp / "nope.qg")), "does not exist"),
        "quantum_not_in_graph": (
            lambda doc: doc["quantum_ids"].append(str(uuid.UUID(int=7))),
            f"quantum ID {uuid.UUID(int=7)} is not in quantum graph",
        ),
        "run_mismatch": (lambda doc: doc["dbb"].update(output_run="other/run"), "does not match"),
        "unknown_activator": (lambda doc: doc["execution"].update(activator="teleport"), "unknown activator"),
        "unknown_label_activator": (
            lambda doc: doc["execution"].update(activators_by_label={"isr": "teleport"}),
            "execution.activators_by_label.isr: unknown activator 'teleport'",
        ),
        "activator_for_no_task": (
            lambda doc: doc["execution"].update(activators_by_label={"nosuchtask": "in-process"}),
            "activators_by_label names 'nosuchtask', which is not a task label",
        ),
        "database_url": (
            lambda doc: doc["dbb"].update(repo="postgresql://butler@db.example/dbb"),
            "a bundle must not carry a database URL",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "bad_json",
        "missing_field",
        "unknown_field",
        "bad_value",
        "qgraph_missing",
        "quantum_not_in_graph",
        "run_mismatch",
        "unknown_activator",
        "unknown_label_activator",
        "activator_for_no_task",
        "database_url",
    ],
)
def test_malformed_bundle(shared_campaign: Campaign, case: str, tmp_path: Path) -> None:
    campaign = shared_campaign
    before = campaign.datasets_in_run()
    original = campaign.bundle_files()[0]
    breaker, expected = _breakers(campaign.root)[case]
    text = original.read_text()
    if case == "bad_json":
        broken_text = breaker(text)  # type: ignore[operator]
    else:
        doc = json.loads(text)
        doc["qgraph"] = str(original.with_suffix(".qg"))  # the copy lives elsewhere
        breaker(doc)  # type: ignore[operator]
        broken_text = json.dumps(doc)
    broken = tmp_path / "broken.json"
    broken.write_text(broken_text)
    workspace = tmp_path / "ws"
    result = pilot("run", "--processes", "0", broken, "--workspace", workspace)
    assert result.returncode == ExitCode.BAD_BUNDLE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and lines[0].startswith("pilot: error:")
    assert not campaign.staging.exists()
    assert not list(workspace.glob("*/report.json"))
    assert campaign.datasets_in_run() == before


def test_missing_bundle_file(tmp_path: Path) -> None:
    result = pilot("run", "--processes", "0", tmp_path / "absent.json")
    assert result.returncode == ExitCode.BAD_BUNDLE
    assert result.stderr.strip() == f"pilot: error: bundle file {tmp_path / 'absent.json'} does not exist"


def test_unreachable_dbb(shared_campaign: Campaign, tmp_path: Path) -> None:
    campaign = shared_campaign
    original = campaign.bundle_files()[0]
    doc = json.loads(original.read_text())
    doc["dbb"]["repo"] = str(campaign.root / "no-such-dbb")
    doc["qgraph"] = str(original.with_suffix(".qg"))
    broken = tmp_path / "elsewhere.json"
    broken.write_text(json.dumps(doc))
    result = pilot("run", "--processes", "0", broken, "--workspace", tmp_path / "ws")
    assert result.returncode == ExitCode.STAGE_IN_FAILED
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot read DBB configuration" in result.stderr


def test_bundle_of_missing_graph(tmp_path: Path) -> None:
    result = pilot("bundle", tmp_path / "none.qg", "--repo", tmp_path, "--out", tmp_path / "out")
    assert result.returncode == ExitCode.BAD_BUNDLE
    assert result.stderr.strip() == f"pilot: error: quantum graph file {tmp_path / 'none.qg'} does not exist"
    assert not (tmp_path / "out").exists()
