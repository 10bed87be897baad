"""The pilot-wide input cache: a DBB file fetched once serves every bundle of the pilot.

Layout under the pilot's work area::

    input-cache/<dbb-key>/<path relative to the DBB datastore root>
    input-cache/<dbb-key>/<path>.blake2b        checksum computed when the file was fetched

``dbb-key`` is a short hash of the DBB datastore root, so two DBBs never share
entries.  A bundle's workspace gets a hard link to the cached file (a copy where the
file system cannot link), at the path its local datastore expects; the quanta read
that.  Files enter the cache only whole and verified (temporary name, then rename),
so concurrent bundles and crashed fetches never leave a bad entry behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from lsst.resources import ResourcePath


class InputCache:
    """Verified copies of DBB files, shared by the bundles of one pilot."""

    def __init__(self, root: Path, dbb_root: ResourcePath) -> None:
        key = hashlib.sha256(str(dbb_root).encode()).hexdigest()[:16]
        self.root = root / key

    def path_of(self, relative_path: str) -> Path:
        """Where ``relative_path`` of the DBB datastore is (or will be) cached."""
        return self.root / relative_path

    def lookup(self, relative_path: str, size: int) -> Path | None:
        """Return the cached file if present with ``size`` bytes (any size if ``size`` < 0)."""
        path = self.path_of(relative_path)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return None
        return path if size < 0 or actual == size else None

    def checksum_of(self, relative_path: str) -> str | None:
        """The blake2b digest recorded when the file was cached, if any."""
        try:
            return self._checksum_path(relative_path).read_text().strip() or None
        except FileNotFoundError:
            return None

    def record_checksum(self, relative_path: str, digest: str) -> None:
        """Remember ``digest`` of a cached file (written whole: temporary name, then rename)."""
        target = self._checksum_path(relative_path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(digest + "\n")
        tmp.replace(target)

    def link_into(self, relative_path: str, destination: Path) -> None:
        """Make ``destination`` (in a workspace) a hard link to the cached file, or a copy."""
        source = self.path_of(relative_path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = destination.with_name(f".{destination.name}.{os.getpid()}.link")
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        tmp.replace(destination)

    def _checksum_path(self, relative_path: str) -> Path:
        path = self.path_of(relative_path)
        return path.with_name(path.name + ".blake2b")


def blake2b_of(path: Path) -> str:
    """Hex blake2b digest of a file (the digest `FileDatastore` records)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "blake2b").hexdigest()
