"""The pilot's error taxonomy: every error that ends a command, each with its exit code.

``str(error)`` is the one-line message the user sees (``pilot: error: <message>``,
printed by the command line's single handler); the class says what went wrong and
``exit_code`` (`pilot.exit_codes.ExitCode`) how the process ends::

    PilotError
    ├── ConfigError            19  bad option, token file, scheduler URL, work area
    │   ├── SlotError          19  malformed machine ad
    │   └── PluginError        19  an activator or stager plugin that fails to load
    │       └── PluginNotFound 19  no plugin of that name (or URI scheme) is installed
    ├── BundleError            11  malformed or inconsistent bundle or quantum graph
    ├── StageInError           12
    ├── StageOutError          13
    ├── InterruptedRun         14
    ├── DBBError               15
    ├── SchedulerAuthError     17  the scheduler refused the token (401/403)
    ├── SchedulerUnreachable   18  no answer, or only 5xx, after retries
    └── SchedulerRejected      20  any other 4xx: a protocol mismatch
        └── LeaseGone          14  the lease lapsed or is unknown (404/410 on a lease)

`SchedulerRejected` and `LeaseGone` are shared by both sides of the scheduler
protocol: the scheduler raises them and answers with their ``status``, and the
client raises the same class on such an answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .exit_codes import ExitCode

if TYPE_CHECKING:
    from lsst.resources import ResourcePath


class PilotError(Exception):
    """Base class of the errors that end a pilot command with a documented exit code.

    Subclasses set ``exit_code``; ``str(error)`` is the one-line message shown to
    the user, naming the bad thing (option, file, URL).
    """

    exit_code: ClassVar[ExitCode]


class ConfigError(PilotError):
    """The pilot's own configuration is unusable: a bad option value, an unreadable
    or empty token file, a plain-http scheduler URL, an uncreatable work area.
    """

    exit_code = ExitCode.CONFIG_ERROR


class SlotError(ConfigError):
    """The slot description (the HTCondor machine ad) is malformed."""


class PluginError(ConfigError):
    """An activator or stager plugin cannot be used: its entry point fails to
    import, or it is not a subclass of the plugin base class.
    """


class PluginNotFound(PluginError, LookupError):
    """No installed plugin has the name (activators) or serves the URI scheme (stagers) asked for."""


class BundleError(PilotError):
    """The bundle, or a file it names, is malformed or inconsistent."""

    exit_code = ExitCode.BAD_BUNDLE


class StageInError(PilotError):
    """An input could not be fetched or failed verification."""

    exit_code = ExitCode.STAGE_IN_FAILED


class StageOutError(PilotError):
    """Outputs could not be staged to the DBB."""

    exit_code = ExitCode.STAGE_OUT_FAILED


class DBBError(PilotError):
    """The DBB repository is unreachable or refused an operation."""

    exit_code = ExitCode.DBB_ERROR


class InterruptedRun(PilotError):
    """A signal stopped the run."""

    exit_code = ExitCode.INTERRUPTED


class SchedulerAuthError(PilotError):
    """The scheduler refused the token (401/403)."""

    exit_code = ExitCode.AUTH_FAILED


class SchedulerUnreachable(PilotError):
    """The scheduler could not be reached, or kept failing (5xx), after retries."""

    exit_code = ExitCode.SCHEDULER_UNREACHABLE


class SchedulerRejected(PilotError):
    """The scheduler refused a request (an HTTP 4xx other than 401/403): a protocol mismatch.

    ``status`` is the HTTP status the scheduler answers it with.
    """

    exit_code = ExitCode.SCHEDULER_REJECTED
    status: ClassVar[int] = 400


class LeaseGone(SchedulerRejected):
    """The lease lapsed (or is unknown): its bundle was re-queued; stop working on it."""

    exit_code = ExitCode.INTERRUPTED
    status = 410


def shown(uri: ResourcePath) -> str:
    """Return ``uri`` as an operator would type it in a message: local files as plain paths."""
    return uri.ospath if uri.isLocal and uri.scheme == "file" else str(uri)
