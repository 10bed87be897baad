"""Stager for a DBB on a POSIX file system (``file://`` URIs)."""

from __future__ import annotations

import os
import uuid
from typing import ClassVar

from lsst.resources import ResourcePath

from .base import TransferError
from .resource_path import ResourcePathStager


class FileStager(ResourcePathStager):
    """Copies with `lsst.resources.ResourcePath.transfer_from`; uploads and commits by ``rename``."""

    schemes: ClassVar[tuple[str, ...]] = ("file", "")

    def upload(self, source: ResourcePath, destination: ResourcePath) -> int:
        # A local upload is a fetch in the other direction: temporary name, then rename.
        return self.fetch(source, destination)

    def commit(self, content: bytes, destination: ResourcePath) -> None:
        tmp = destination.updatedFile(f".{destination.basename()}.{uuid.uuid4().hex}.tmp")
        try:
            destination.dirname().mkdir()
            with open(tmp.ospath, "wb") as stream:
                stream.write(content)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp.ospath, destination.ospath)
        except OSError as err:
            raise TransferError(f"cannot write {destination}: {err}", permanent=True) from err
        finally:
            if os.path.exists(tmp.ospath):
                os.remove(tmp.ospath)
