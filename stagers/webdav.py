"""Stager for a DBB behind WebDAV (``http://`` / ``https://`` URIs), e.g. an xrootd or dCache door."""

from __future__ import annotations

import os
import uuid
from typing import ClassVar

from lsst.resources import ResourcePath

from .base import Stager, TransferError


class WebDAVStager(Stager):
    """Transfers with `lsst.resources` HTTP/WebDAV support; commits by WebDAV ``MOVE``."""

    schemes: ClassVar[tuple[str, ...]] = ("http", "https", "dav", "davs")

    def fetch(self, source: ResourcePath, destination: ResourcePath) -> int:
        tmp = destination.updatedFile(f".{destination.basename()}.{uuid.uuid4().hex}.tmp")
        try:
            destination.dirname().mkdir()
            tmp.transfer_from(source, transfer="copy", overwrite=True)
            os.replace(tmp.ospath, destination.ospath)
            return os.path.getsize(destination.ospath)
        except FileNotFoundError as err:
            raise TransferError(f"{source} does not exist", permanent=True) from err
        except Exception as err:
            raise TransferError(f"cannot fetch {source}: {err}", permanent=_permanent(err)) from err
        finally:
            if os.path.exists(tmp.ospath):
                os.remove(tmp.ospath)

    def upload(self, source: ResourcePath, destination: ResourcePath) -> int:
        try:
            destination.dirname().mkdir()
            destination.transfer_from(source, transfer="copy", overwrite=True)
            return destination.size()
        except Exception as err:
            raise TransferError(
                f"cannot upload {source} to {destination}: {err}", permanent=_permanent(err)
            ) from err

    def commit(self, content: bytes, destination: ResourcePath) -> None:
        tmp = destination.updatedFile(f".{destination.basename()}.{uuid.uuid4().hex}.tmp")
        try:
            destination.dirname().mkdir()
            tmp.write(content, overwrite=True)
            # WebDAV MOVE replaces the target in one step: readers see the old or the new document.
            destination.transfer_from(tmp, transfer="move", overwrite=True)
        except Exception as err:
            raise TransferError(f"cannot commit {destination}: {err}", permanent=_permanent(err)) from err

    def exists(self, uri: ResourcePath) -> bool:
        try:
            return uri.exists()
        except Exception as err:
            raise TransferError(f"cannot reach {uri}: {err}", permanent=_permanent(err)) from err

    def read(self, uri: ResourcePath) -> bytes:
        try:
            return uri.read()
        except FileNotFoundError as err:
            raise TransferError(f"{uri} does not exist", permanent=True) from err
        except Exception as err:
            raise TransferError(f"cannot read {uri}: {err}", permanent=_permanent(err)) from err


def _permanent(err: Exception) -> bool:
    """Missing files and refused credentials are permanent; the rest (5xx, resets) may pass."""
    text = str(err)
    return isinstance(err, FileNotFoundError | PermissionError) or any(
        f"status: {code}" in text for code in (400, 401, 403, 404, 405, 409)
    )
