"""Logging for the pilot and its workers: console at the chosen level, loggers at INFO or below.

Loggers stay at INFO (or lower) so that task logs — the ``<label>_log`` datasets
``SingleQuantumExecutor`` captures — hold what ``pipetask`` captures, whatever the
console shows.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(console_level: int) -> None:
    """Send records at ``console_level`` and above to stderr; keep loggers at INFO or below."""
    console = logging.StreamHandler()
    console.setLevel(console_level)
    console.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers = [console]
    root.setLevel(min(logging.INFO, console_level))
    if console_level > logging.DEBUG:
        # pipe_base warns on every import without EUPS; it is not news to an operator.
        logging.getLogger("lsst.utils.packages").setLevel(logging.ERROR)


def console_level() -> int:
    """The console level configured in this process (WARNING if none)."""
    handlers = logging.getLogger().handlers
    return handlers[0].level if handlers else logging.WARNING
