"""The stager plugin contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from lsst.resources import ResourcePath


class TransferError(Exception):
    """A transfer failed.

    ``permanent`` is `True` when retrying cannot help (missing file, refused
    credentials); `False` for transient failures (timeouts, resets, 5xx).
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Stager(ABC):
    """Moves files between one kind of storage (the DBB side) and local disk.

    A stager is chosen by the URI scheme of the DBB side.  Implementations should wrap
    `lsst.resources.ResourcePath` transfers rather than re-implement them.  Every method
    raises `TransferError` on failure, never a scheme-specific exception.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    """URI schemes this stager serves (e.g. ``("file",)``)."""

    @abstractmethod
    def fetch(self, source: ResourcePath, destination: ResourcePath) -> int:
        """Copy remote ``source`` to local ``destination``; return bytes copied.

        ``destination`` appears whole or not at all (written under a temporary name
        and renamed).
        """

    @abstractmethod
    def upload(self, source: ResourcePath, destination: ResourcePath) -> int:
        """Copy local ``source`` to remote ``destination``, overwriting; return bytes copied.

        A reader may see a partially written ``destination`` on some storage; callers
        make data visible only through `commit`.
        """

    @abstractmethod
    def commit(self, content: bytes, destination: ResourcePath) -> None:
        """Write a small document so that it appears atomically (all or nothing)."""

    @abstractmethod
    def exists(self, uri: ResourcePath) -> bool:
        """Return whether ``uri`` exists."""

    @abstractmethod
    def read(self, uri: ResourcePath) -> bytes:
        """Return the content of a small remote document."""

    def local_path(self, uri: ResourcePath) -> Path | None:
        """The local directory ``uri`` names, if the job writes it as one (files are placed, not sent)."""
        return None
