"""Stager for a DBB in S3 (``s3://`` URIs; endpoint and credentials from the job's environment)."""

from __future__ import annotations

from typing import ClassVar

from lsst.resources import ResourcePath

from .base import TransferError
from .resource_path import ResourcePathStager


class S3Stager(ResourcePathStager):
    """Transfers with `lsst.resources` S3 support; a single-object PUT is the atomic commit."""

    schemes: ClassVar[tuple[str, ...]] = ("s3",)

    def commit(self, content: bytes, destination: ResourcePath) -> None:
        # An S3 object appears whole or not at all: one PUT is the commit.
        try:
            destination.write(content, overwrite=True)
        except Exception as err:
            raise TransferError(
                f"cannot commit {destination}: {err}", permanent=self.is_permanent(err)
            ) from err

    def is_permanent(self, err: Exception) -> bool:
        """Missing objects and refused credentials are permanent; throttling and 5xx may pass."""
        text = str(err)
        return super().is_permanent(err) or any(
            marker in text
            for marker in ("AccessDenied", "InvalidAccessKeyId", "NoSuchBucket", "(403)", "(404)")
        )
