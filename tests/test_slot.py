"""Slot detection from real machine-ad files (parsed by the HTCondor bindings) and from psutil."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pilot.errors import SlotError
from pilot.exit_codes import ExitCode
from pilot.slot import Slot, available_cores, detect_slot

# What a glidein's condor_starter writes to $_CONDOR_MACHINE_AD (old ClassAd syntax),
# with some attributes as expressions.
MACHINE_AD = """\
MyType = "Machine"
Name = "slot1_1@glidein_12345@node042.example.org"
Cpus = 2 * 4
Memory = Cpus * 2048
Disk = 50 * 1024 * 1024
GLIDEIN_ToDie = 1767225600 + 3600
GLIDEIN_Site = "SLAC"
GLIDEIN_ResourceName = "SLAC_S3DF"
Requirements = (START) && (IsValidCheckpointPlatform)
"""


def write_ad(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / ".machine.ad"
    path.write_text(text)
    return {"_CONDOR_MACHINE_AD": str(path), "_CONDOR_SCRATCH_DIR": str(tmp_path)}


def test_machine_ad_with_expressions(tmp_path: Path) -> None:
    slot = detect_slot(environ=write_ad(tmp_path, MACHINE_AD))
    assert slot == Slot(
        cores=8,
        memory_mb=16384,
        disk_mb=50 * 1024,
        end_of_life=1767225600 + 3600.0,
        site="SLAC",
        source="machine-ad",
    )
    assert slot.walltime_left(now=1767225600) == 3600.0
    assert slot.walltime_left(now=1767225600 + 7200) == 0.0


def test_new_classad_syntax_and_site_fallbacks(tmp_path: Path) -> None:
    text = '[ Cpus = 1; Memory = 1000; Disk = 4096; GLIDEIN_ResourceName = "NERSC" ]'
    slot = detect_slot(environ=write_ad(tmp_path, text))
    assert (slot.cores, slot.memory_mb, slot.disk_mb, slot.site) == (1, 1000, 4, "NERSC")
    assert slot.end_of_life is None and slot.walltime_left() is None
    slot = detect_slot(environ=write_ad(tmp_path, 'Cpus = 1\nMemory = 1\nDisk = 1\nSite = "IN2P3"\n'))
    assert slot.site == "IN2P3"


def test_psutil_fallback(tmp_path: Path) -> None:
    slot = detect_slot(environ={"_CONDOR_SCRATCH_DIR": str(tmp_path)})
    assert slot.source == "psutil"
    assert slot.cores == available_cores() == len(os.sched_getaffinity(0))
    assert slot.memory_mb == psutil.virtual_memory().total // 2**20
    # Free space moves as other processes write; it is the scratch dir's file system.
    assert abs(slot.disk_mb - shutil.disk_usage(tmp_path).free // 2**20) < 1024
    assert slot.end_of_life is None and slot.site is None


def test_unreadable_machine_ad_falls_back_to_psutil(tmp_path: Path) -> None:
    slot = detect_slot(environ={"_CONDOR_MACHINE_AD": str(tmp_path / "missing.ad")})
    assert slot.source == "psutil"


def test_lifetime_wins_over_the_machine_ad(tmp_path: Path) -> None:
    before = time.time()
    slot = detect_slot(lifetime=600, environ=write_ad(tmp_path, MACHINE_AD))
    after = time.time()
    assert slot.source == "machine-ad"
    assert slot.end_of_life is not None and before + 600 <= slot.end_of_life <= after + 600
    left = slot.walltime_left()
    assert left is not None and 0 < left <= 600
    psutil_slot = detect_slot(lifetime=30, environ={"_CONDOR_SCRATCH_DIR": str(tmp_path)})
    assert psutil_slot.end_of_life is not None and psutil_slot.end_of_life >= before + 30


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Cpus = 4\nMemory =\nDisk = 10\n", "line 2: cannot parse the value of Memory"),
        ("Cpus = 4\nMemory = (1 +\nDisk = 10\n", "line 2: cannot parse the value of Memory"),
        ("Cpus = 4\nthis is not an ad\n", "line 2: expected 'Name = value'"),
        ("Memory = 10\nDisk = 10\n", "no Cpus attribute"),
        ('Cpus = "four"\nMemory = 10\nDisk = 10\n', 'Cpus = "four" is not a non-negative number'),
        ("Cpus = 0\nMemory = 10\nDisk = 10\n", "Cpus = 0 is less than 1"),
        ("Cpus = 1\nMemory = 10\nDisk = UndefinedThing\n", "Disk = UndefinedThing is not a non-negative"),
        ('Cpus = 1\nMemory = 10\nDisk = 1\nGLIDEIN_ToDie = "soon"\n', "GLIDEIN_ToDie"),
        ("[ Cpus = 1; Memory = ", "not a ClassAd"),
        ("\n# only a comment\n", "no attributes"),
    ],
)
def test_malformed_machine_ad(tmp_path: Path, text: str, problem: str) -> None:
    environ = write_ad(tmp_path, text)
    with pytest.raises(SlotError) as caught:
        detect_slot(environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"machine ad {environ['_CONDOR_MACHINE_AD']}: ")
    assert problem in message
    assert caught.value.exit_code == ExitCode.CONFIG_ERROR == 19


def test_available_cores_unchanged() -> None:
    # Existing callers (pilot run's default worker count) keep the CPU affinity.
    code = "from pilot.slot import available_cores; print(available_cores())"
    result = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 and "taskset" in result.stderr:
        pytest.skip("taskset is not usable here")
    assert result.stdout.strip() == "1", result.stderr
