"""What this job may use: cores, memory, disk and walltime, from the HTCondor machine ad or psutil."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import psutil

from .errors import SlotError

_LOG = logging.getLogger(__name__)

_MIB = 1024 * 1024
# One attribute of an "old ClassAd" file, as condor_starter writes $_CONDOR_MACHINE_AD.
_ATTRIBUTE_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)$")
_SITE_ATTRIBUTES = ("GLIDEIN_Site", "GLIDEIN_ResourceName", "Site")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class Slot:
    """The resources of the batch slot this pilot runs in.

    Attributes
    ----------
    cores : `int`
        Cores the pilot may use (at least 1).
    memory_mb : `int`
        Memory in MiB.
    disk_mb : `int`
        Scratch disk in MiB.
    end_of_life : `float` or `None`
        When the slot goes away (UTC epoch seconds), if known.
    site : `str` or `None`
        The site's name, if the machine ad gives one.
    source : `str`
        Where the numbers came from: ``"machine-ad"`` or ``"psutil"``.
    """

    cores: int
    memory_mb: int
    disk_mb: int
    end_of_life: float | None
    site: str | None
    source: Literal["machine-ad", "psutil"]

    def walltime_left(self, now: float | None = None) -> float | None:
        """Seconds until `end_of_life` (never negative), or `None` if it is unknown."""
        if self.end_of_life is None:
            return None
        return max(0.0, self.end_of_life - (time.time() if now is None else now))


def detect_slot(lifetime: float | None = None, environ: Mapping[str, str] = os.environ) -> Slot:
    """Describe the slot: from ``$_CONDOR_MACHINE_AD`` when it names a readable file, else psutil.

    Parameters
    ----------
    lifetime : `float`, optional
        Seconds the pilot may live from now; when given it sets `Slot.end_of_life`,
        overriding the machine ad's ``GLIDEIN_ToDie``.
    environ : `~collections.abc.Mapping`
        The environment to read (``_CONDOR_MACHINE_AD``, ``_CONDOR_SCRATCH_DIR``).

    Raises
    ------
    SlotError
        The machine ad cannot be parsed, or lacks or mangles Cpus, Memory or Disk.
    """
    start = time.time()
    ad_path = environ.get("_CONDOR_MACHINE_AD")
    slot: Slot | None = None
    if ad_path:
        try:
            text = Path(ad_path).read_text()
        except (OSError, UnicodeDecodeError) as err:
            _LOG.warning("Machine ad %s is not readable (%s); measuring the slot with psutil.", ad_path, err)
        else:
            slot = _slot_from_machine_ad(text, ad_path)
    if slot is None:
        slot = _slot_from_psutil(environ)
    if lifetime is not None:
        slot = dataclasses.replace(slot, end_of_life=start + lifetime)
    _LOG.info("Slot: %s", slot)
    return slot


def _slot_from_psutil(environ: Mapping[str, str]) -> Slot:
    scratch = environ.get("_CONDOR_SCRATCH_DIR") or os.getcwd()
    return Slot(
        cores=available_cores(),
        memory_mb=psutil.virtual_memory().total // _MIB,
        disk_mb=shutil.disk_usage(scratch).free // _MIB,
        end_of_life=None,
        site=None,
        source="psutil",
    )


def _slot_from_machine_ad(text: str, path: str) -> Slot:
    ad = _parse_ad(text, path)

    def number(name: str, *, required: bool = True) -> float | None:
        if name not in ad:
            if required:
                raise SlotError(f"machine ad {path}: no {name} attribute")
            return None
        value = ad.eval(name)
        # Exactly int or float: bool is an int, and classad2.Value (undefined, error) an IntEnum.
        if type(value) not in (int, float) or value < 0:
            raise SlotError(f"machine ad {path}: {name} = {ad.lookup(name)} is not a non-negative number")
        return float(value)

    cores = number("Cpus")
    memory = number("Memory")
    disk_kb = number("Disk")
    assert cores is not None and memory is not None and disk_kb is not None
    if cores < 1:
        raise SlotError(f"machine ad {path}: Cpus = {ad.lookup('Cpus')} is less than 1")
    site = None
    for name in _SITE_ATTRIBUTES:
        value = ad.eval(name) if name in ad else None
        if isinstance(value, str) and value:
            site = value
            break
    return Slot(
        cores=int(cores),
        memory_mb=int(memory),
        disk_mb=int(disk_kb // 1024),
        end_of_life=number("GLIDEIN_ToDie", required=False),
        site=site,
        source="machine-ad",
    )


def _parse_ad(text: str, path: str) -> Any:
    """Parse a ClassAd file in the old (``Name = expr`` per line) or new (``[...]``) syntax.

    Each expression is parsed on its own, so a bad line is reported by number: the
    bindings' ``parseOne`` silently drops everything after a syntax error.
    """
    import classad2 as classad  # The HTCondor bindings (PyPI package ``htcondor``).

    if text.lstrip().startswith("["):
        try:
            ad = classad.ClassAd(text)
        except (classad.ClassAdException, ValueError) as err:
            raise SlotError(f"machine ad {path}: not a ClassAd ({err})") from None
    else:
        ad = classad.ClassAd()
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _ATTRIBUTE_LINE.match(line)
            if match is None:
                raise SlotError(f"machine ad {path}: line {number}: expected 'Name = value', got {line!r}")
            name, expression = match.group(1), match.group(2).strip()
            try:
                ad[name] = classad.ExprTree(expression)
            except (classad.ClassAdException, ValueError):
                raise SlotError(
                    f"machine ad {path}: line {number}: cannot parse the value of {name}: {expression!r}"
                ) from None
    if len(ad) == 0:
        raise SlotError(f"machine ad {path}: no attributes")
    return ad


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Return ``text`` in bytes; K/M/G/T are binary (1024-based) with or without 'iB'/'B'.

    Raises
    ------
    ValueError
        ``text`` is not a size.
    """
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size (e.g. '2GiB', '500MB')")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
