"""The pilot's exit codes: one table, kept clear of click's 1/2 and of 128+signal."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of every ``pilot`` command.

    Codes 1 and 2 belong to Python/click (uncaught error, click's own usage errors)
    and 128+N to death by signal N, so the pilot's own codes start at 10.  Each
    `pilot.errors.PilotError` subclass names the code it ends a command with.
    """

    SUCCESS = 0
    QUANTA_FAILED = 10
    BAD_BUNDLE = 11
    STAGE_IN_FAILED = 12
    STAGE_OUT_FAILED = 13
    INTERRUPTED = 14
    DBB_ERROR = 15
    DRAINED = 16
    AUTH_FAILED = 17
    SCHEDULER_UNREACHABLE = 18
    CONFIG_ERROR = 19
    SCHEDULER_REJECTED = 20


MEANINGS: dict[ExitCode, str] = {
    ExitCode.SUCCESS: "every quantum succeeded and its outputs were staged (or ingested)",
    ExitCode.QUANTA_FAILED: "some quanta failed or were blocked; the succeeded ones were staged out",
    ExitCode.BAD_BUNDLE: "malformed or inconsistent bundle or quantum graph; nothing was written",
    ExitCode.STAGE_IN_FAILED: "inputs could not be fetched or verified; nothing was executed or staged",
    ExitCode.STAGE_OUT_FAILED: "outputs could not be staged to the DBB; the workspace keeps them",
    ExitCode.INTERRUPTED: "a signal stopped the run; finished work was kept",
    ExitCode.DBB_ERROR: "the DBB repository is unreachable or refused an operation (central side)",
    ExitCode.DRAINED: "pilot start: drained on a signal or at end of life; finished work reported",
    ExitCode.AUTH_FAILED: "the scheduler refused the pilot's token (401/403)",
    ExitCode.SCHEDULER_UNREACHABLE: "the scheduler could not be reached after retries",
    ExitCode.CONFIG_ERROR: "bad option value, token file, scheduler URL, work area, machine ad or plugin",
    ExitCode.SCHEDULER_REJECTED: "the scheduler rejected a request (4xx, not 401/403): a protocol mismatch",
}
