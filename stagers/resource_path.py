"""What every built-in stager shares: transfers through `lsst.resources.ResourcePath`."""

from __future__ import annotations

import os
import uuid

from lsst.resources import ResourcePath

from .base import Stager, TransferError


class ResourcePathStager(Stager):
    """Fetch, upload, existence and reads on `lsst.resources`; subclasses say how to commit."""

    def prepare_parent(self, destination: ResourcePath) -> None:  # noqa: B027 - optional hook
        """Make what must exist before ``destination`` can be written (nothing, by default)."""

    def upload(self, source: ResourcePath, destination: ResourcePath) -> int:
        try:
            self.prepare_parent(destination)
            destination.transfer_from(source, transfer="copy", overwrite=True)
            return destination.size()
        except Exception as err:
            raise TransferError(
                f"cannot upload {source} to {destination}: {err}", permanent=self.is_permanent(err)
            ) from err

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
            raise TransferError(f"cannot fetch {source}: {err}", permanent=self.is_permanent(err)) from err
        finally:
            if os.path.exists(tmp.ospath):
                os.remove(tmp.ospath)

    def exists(self, uri: ResourcePath) -> bool:
        try:
            return uri.exists()
        except Exception as err:
            raise TransferError(f"cannot reach {uri}: {err}", permanent=self.is_permanent(err)) from err

    def read(self, uri: ResourcePath) -> bytes:
        try:
            return uri.read()
        except FileNotFoundError as err:
            raise TransferError(f"{uri} does not exist", permanent=True) from err
        except Exception as err:
            raise TransferError(f"cannot read {uri}: {err}", permanent=self.is_permanent(err)) from err

    def is_permanent(self, err: Exception) -> bool:
        """Whether retrying ``err`` cannot help (missing file, refused credentials)."""
        return isinstance(err, FileNotFoundError | PermissionError)
