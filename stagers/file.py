"""Stager for a DBB on a POSIX file system (``file://`` URIs)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import ClassVar

from lsst.resources import ResourcePath

from .base import TransferError
from .resource_path import ResourcePathStager


class FileStager(ResourcePathStager):
    """Copies with `lsst.resources.ResourcePath.transfer_from`; uploads and commits by ``rename``."""

    schemes: ClassVar[tuple[str, ...]] = ("file", "")

    def local_path(self, uri: ResourcePath) -> Path | None:
        # The staging area is a directory here: stage-out links files into it directly.
        return Path(uri.ospath)

    def fetch(self, source: ResourcePath, destination: ResourcePath) -> int:
        # On one filesystem a hard link is the fetch and costs no byte: datastore files are
        # never rewritten in place (a butler writes a new file and renames it), so the link
        # reads exactly what a copy would.  Across filesystems (or where links are refused)
        # the file is copied.
        tmp = destination.updatedFile(f".{destination.basename()}.{uuid.uuid4().hex}.tmp")
        try:
            os.makedirs(destination.dirname().ospath, exist_ok=True)
            os.link(source.ospath, tmp.ospath)
            os.replace(tmp.ospath, destination.ospath)
            return os.path.getsize(destination.ospath)
        except OSError:
            if os.path.lexists(tmp.ospath):
                os.remove(tmp.ospath)
            return super().fetch(source, destination)

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
