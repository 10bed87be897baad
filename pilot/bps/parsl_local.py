"""A ctrl_bps_parsl site for one machine that talks only over loopback.

ctrl_bps_parsl's own ``Local`` site gives its ``HighThroughputExecutor`` no address, so
Parsl's workers look for the interchange at the machine's public addresses, which a
laptop off the network, a sandboxed CI runner or a batch node behind a firewall may
not route.  This site is the same executor bound to ``127.0.0.1`` for both the
interchange (``address``) and the submit side (``loopback_address``), its one block of
workers started by a ``LocalProvider``.

A ``HighThroughputExecutor`` rather than a ``ThreadPoolExecutor``: both run each BPS job
as a separate ``bash`` command, but the HTEX runs them from worker processes, as a
cluster site does (so the tests exercise the code path a real site takes), and honours
BPS's per-job ``priority``.  Its start-up costs a few seconds, paid once per submission.

Use it from a submit YAML::

    wmsServiceClass: lsst.ctrl.bps.parsl.ParslService
    computeSite: local
    site:
      local:
        class: pilot.bps.parsl_local.LoopbackLocal
        cores: 2

``site.<name>.cores`` is how many jobs run at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsst.ctrl.bps.parsl.configuration import get_bps_config_value
from lsst.ctrl.bps.parsl.site import SiteConfig
from parsl.executors import HighThroughputExecutor
from parsl.executors.base import ParslExecutor
from parsl.providers import LocalProvider

if TYPE_CHECKING:
    from lsst.ctrl.bps.parsl.job import ParslJob

LOOPBACK = "127.0.0.1"
LABEL = "loopback"


class LoopbackLocal(SiteConfig):
    """Run a BPS workflow's jobs on this machine, ``site.<name>.cores`` at a time, over 127.0.0.1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["resource_list"] = ["priority"]  # BPS's per-job priority reaches the executor
        super().__init__(*args, **kwargs)

    def get_address(self) -> str:
        return LOOPBACK

    def get_executors(self) -> list[ParslExecutor]:
        cores = get_bps_config_value(self.site, "cores", int, required=True)
        return [
            HighThroughputExecutor(
                LABEL,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
                address=LOOPBACK,
                loopback_address=LOOPBACK,
                max_workers_per_node=cores,
            )
        ]

    def select_executor(self, job: ParslJob) -> str:
        return LABEL
