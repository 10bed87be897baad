"""The pilot behind BPS.

- ``pilot run-qbb`` (`pilot.bps.run_qbb`): a drop-in for the ``pipetask run-qbb`` of BPS jobs.
- ``wmsServiceClass: pilot.bps.PilotService`` (`pilot.bps.service`): a ctrl_bps WMS plugin
  queuing BPS workflows as bundles in ``pilot serve``.

``PilotService`` is imported on first use, so ``pilot run-qbb`` runs without lsst-ctrl-bps.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PilotService"]


def __getattr__(name: str) -> Any:
    if name == "PilotService":
        from .service import PilotService

        return PilotService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
