"""A bundle's wall-time estimate, matched against a slot's time left (`pilot.scheduler.statements.fits`)."""

from __future__ import annotations

from ..bundle_model import Bundle


def estimated_seconds(bundle: Bundle, seconds_per_quantum: float) -> float:
    """Return the bundle's expected wall time on a slot it fits.

    ``resources.seconds`` when the bundle gives it, else ``seconds_per_quantum`` times
    its quanta over its cores (a slot it fits has at least ``resources.cores`` cores,
    so ``min(cores, slot cores)`` is always ``resources.cores``).
    """
    if bundle.resources.seconds is not None:
        return bundle.resources.seconds
    return seconds_per_quantum * len(bundle.quantum_ids) / bundle.resources.cores
