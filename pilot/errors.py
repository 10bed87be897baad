"""Exceptions that end a pilot command with a one-line message and a documented exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exit_codes import ExitCode

if TYPE_CHECKING:
    from lsst.resources import ResourcePath


class PilotError(Exception):
    """Base class: ``str(error)`` is the one-line message shown to the user."""

    exit_code: ExitCode = ExitCode.BAD_BUNDLE


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


class SlotError(PilotError):
    """The slot description (the HTCondor machine ad) is malformed."""

    exit_code = ExitCode.BAD_BUNDLE


def shown(uri: ResourcePath) -> str:
    """Return ``uri`` as an operator would type it in a message: local files as plain paths."""
    return uri.ospath if uri.isLocal and uri.scheme == "file" else str(uri)
