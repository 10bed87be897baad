"""Stager for a DBB in S3 (``s3://`` URIs; endpoint and credentials from the job's environment)."""

from __future__ import annotations

import os
import uuid
from typing import ClassVar

from lsst.resources import ResourcePath

from .base import Stager, TransferError


class S3Stager(Stager):
    """Transfers with `lsst.resources` S3 support; a single-object PUT is the atomic commit."""

    schemes: ClassVar[tuple[str, ...]] = ("s3",)

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
            destination.transfer_from(source, transfer="copy", overwrite=True)
            return destination.size()
        except Exception as err:
            raise TransferError(
                f"cannot upload {source} to {destination}: {err}", permanent=_permanent(err)
            ) from err

    def commit(self, content: bytes, destination: ResourcePath) -> None:
        # An S3 object appears whole or not at all: one PUT is the commit.
        try:
            destination.write(content, overwrite=True)
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
    """Missing objects and refused credentials are permanent; throttling and 5xx may pass."""
    text = str(err)
    return isinstance(err, FileNotFoundError | PermissionError) or any(
        marker in text for marker in ("AccessDenied", "InvalidAccessKeyId", "NoSuchBucket", "(403)", "(404)")
    )
