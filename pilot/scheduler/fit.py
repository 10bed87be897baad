"""Matching bundles to slots: which queued bundles a slot can take, and the wall-time estimate."""

from __future__ import annotations

import sqlalchemy as sa

from ..bundle_model import Bundle
from ..protocol import Slot


def estimated_seconds(bundle: Bundle, seconds_per_quantum: float) -> float:
    """Return the bundle's expected wall time on a slot it fits.

    ``resources.seconds`` when the bundle gives it, else ``seconds_per_quantum`` times
    its quanta over its cores (a slot it fits has at least ``resources.cores`` cores,
    so ``min(cores, slot cores)`` is always ``resources.cores``).
    """
    if bundle.resources.seconds is not None:
        return bundle.resources.seconds
    return seconds_per_quantum * len(bundle.quantum_ids) / bundle.resources.cores


def fits(bundles: sa.Table, slot: Slot) -> list[sa.ColumnElement[bool]]:
    """Return the conditions a row of ``bundles`` must meet to fit ``slot``.

    Cores always; memory, disk and the wall-time estimate only where both the bundle
    and the slot give them (unknown on either side is no constraint).
    """
    b = bundles.c
    conditions: list[sa.ColumnElement[bool]] = [b.cores <= slot.cores]
    if slot.memory_mb is not None:
        conditions.append(sa.or_(b.memory_mb.is_(None), b.memory_mb <= slot.memory_mb))
    if slot.disk_mb is not None:
        conditions.append(sa.or_(b.disk_mb.is_(None), b.disk_mb <= slot.disk_mb))
    if slot.walltime_left_s is not None:
        conditions.append(b.est_seconds <= slot.walltime_left_s)
    return conditions
