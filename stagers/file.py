"""Stager for a DBB on a POSIX file system (``file://`` URIs)."""

from __future__ import annotations

import os
import uuid
from typing import ClassVar

from lsst.resources import ResourcePath

from .base import Stager, TransferError


class FileStager(Stager):
    """Copies with `lsst.resources.ResourcePath.transfer_from`; commits by ``rename``."""

    schemes: ClassVar[tuple[str, ...]] = ("file", "")

    def fetch(self, source: ResourcePath, destination: ResourcePath) -> int:
        return self._copy(source, destination)

    def upload(self, source: ResourcePath, destination: ResourcePath) -> int:
        return self._copy(source, destination)

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

    def exists(self, uri: ResourcePath) -> bool:
        return uri.exists()

    def read(self, uri: ResourcePath) -> bytes:
        try:
            return uri.read()
        except FileNotFoundError as err:
            raise TransferError(f"{uri} does not exist", permanent=True) from err
        except OSError as err:
            raise TransferError(f"cannot read {uri}: {err}", permanent=True) from err

    @staticmethod
    def _copy(source: ResourcePath, destination: ResourcePath) -> int:
        tmp = destination.updatedFile(f".{destination.basename()}.{uuid.uuid4().hex}.tmp")
        try:
            destination.dirname().mkdir()
            tmp.transfer_from(source, transfer="copy", overwrite=True)
            os.replace(tmp.ospath, destination.ospath)
            return os.path.getsize(destination.ospath)
        except FileNotFoundError as err:
            raise TransferError(f"{source} does not exist", permanent=True) from err
        except OSError as err:
            raise TransferError(f"cannot copy {source} to {destination}: {err}", permanent=False) from err
        finally:
            if tmp.exists():
                tmp.remove()
