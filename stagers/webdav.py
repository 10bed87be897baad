"""Stager for a DBB behind WebDAV (``http://`` / ``https://`` URIs), e.g. an xrootd or dCache door."""

from __future__ import annotations

import uuid
from typing import ClassVar

from lsst.resources import ResourcePath

from .base import TransferError
from .resource_path import ResourcePathStager


class WebDAVStager(ResourcePathStager):
    """Transfers with `lsst.resources` HTTP/WebDAV support; commits by WebDAV ``MOVE``."""

    schemes: ClassVar[tuple[str, ...]] = ("http", "https", "dav", "davs")

    def prepare_parent(self, destination: ResourcePath) -> None:
        # A WebDAV PUT into a missing collection is refused (409) by many servers.
        destination.dirname().mkdir()

    def commit(self, content: bytes, destination: ResourcePath) -> None:
        tmp = destination.updatedFile(f".{destination.basename()}.{uuid.uuid4().hex}.tmp")
        try:
            self.prepare_parent(destination)
            tmp.write(content, overwrite=True)
            # WebDAV MOVE replaces the target in one step: readers see the old or the new document.
            destination.transfer_from(tmp, transfer="move", overwrite=True)
        except Exception as err:
            raise TransferError(
                f"cannot commit {destination}: {err}", permanent=self.is_permanent(err)
            ) from err

    def is_permanent(self, err: Exception) -> bool:
        """Missing files and refused requests are permanent; the rest (5xx, resets) may pass."""
        text = str(err)
        return super().is_permanent(err) or any(
            f"status: {code}" in text for code in (400, 401, 403, 404, 405, 409)
        )
