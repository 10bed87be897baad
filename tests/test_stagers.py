"""The stager contract (stagers/base.py), one generic test class run against every built-in stager.

As in ``lsst.resources``' own tests, the tests are written once and parametrised by
scheme: ``file`` (a local directory), ``webdav`` (a real wsgidav server on 127.0.0.1)
and ``s3`` (a real moto server on 127.0.0.1).  The stager is found the way the pilot
finds it, by ``stagers.registry.stager_for`` on the DBB-side URI.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from lsst.resources import ResourcePath

from stagers.base import Stager, TransferError
from stagers.file import FileStager
from stagers.registry import stager_for
from stagers.s3 import S3Stager
from stagers.webdav import WebDAVStager

CONTENT = b"raw pixels \x00\x01\x02" * 1000


@dataclasses.dataclass(frozen=True)
class Remote:
    """A DBB-side directory of one scheme, and the stager class expected to serve it."""

    root: ResourcePath
    expected: type[Stager]

    def join(self, path: str) -> ResourcePath:
        return self.root.join(path)

    @property
    def stager(self) -> Stager:
        return stager_for(self.root)


@pytest.fixture(params=["file", "webdav", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    """An empty remote directory, for each scheme in turn."""
    match request.param:
        case "file":
            (tmp_path / "dbb").mkdir()
            return Remote(ResourcePath(tmp_path / "dbb", forceDirectory=True), FileStager)
        case "webdav":
            url = request.getfixturevalue("webdav")
            return Remote(ResourcePath(f"{url}dbb/", forceDirectory=True), WebDAVStager)
        case "s3":
            bucket = request.getfixturevalue("s3_bucket")
            return Remote(ResourcePath(f"{bucket}dbb/", forceDirectory=True), S3Stager)
    raise AssertionError(request.param)


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """The job's side: a local scratch directory."""
    path = tmp_path / "local"
    path.mkdir()
    return path


def local_file(directory: Path, name: str, content: bytes) -> ResourcePath:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return ResourcePath(path)


def remote_names(directory: ResourcePath) -> set[str]:
    """Paths of every file under ``directory``, relative to it (listed by lsst.resources, not the stager)."""
    names: set[str] = set()
    for found in ResourcePath.findFileResources([directory]):
        relative = found.relative_to(directory)
        assert relative is not None, found
        names.add(relative)
    return names


def local_names(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


class TestStager:
    """What every stager promises, whatever the storage behind it."""

    def test_resolved_by_scheme(self, remote: Remote) -> None:
        stager = remote.stager
        assert type(stager) is remote.expected
        assert remote.root.scheme in stager.schemes

    def test_upload_returns_size_and_read_returns_content(self, remote: Remote, local: Path) -> None:
        source = local_file(local, "out/calexp.fits", CONTENT)
        destination = remote.join("staging/b0/calexp.fits")  # parents do not exist yet
        assert remote.stager.upload(source, destination) == len(CONTENT)
        assert remote.stager.read(destination) == CONTENT
        assert remote_names(remote.root) == {"staging/b0/calexp.fits"}

    def test_upload_overwrites(self, remote: Remote, local: Path) -> None:
        destination = remote.join("staging/src.parq")
        stager = remote.stager
        assert stager.upload(local_file(local, "v1", CONTENT), destination) == len(CONTENT)
        assert stager.upload(local_file(local, "v2", b"shorter"), destination) == len(b"shorter")
        assert stager.read(destination) == b"shorter"

    def test_exists(self, remote: Remote, local: Path) -> None:
        destination = remote.join("a/b.txt")
        stager = remote.stager
        assert not stager.exists(destination)
        stager.upload(local_file(local, "b.txt", b"b"), destination)
        assert stager.exists(destination)
        assert not stager.exists(remote.join("a/c.txt"))

    def test_fetch_copies_whole_file_into_new_directories(self, remote: Remote, local: Path) -> None:
        source = remote.join("raw/DemoCam/raw_0.fits")
        remote.stager.upload(local_file(local / "src", "raw_0.fits", CONTENT), source)
        destination = ResourcePath(local / "cache" / "raw" / "DemoCam" / "raw_0.fits")
        assert remote.stager.fetch(source, destination) == len(CONTENT)
        assert Path(destination.ospath).read_bytes() == CONTENT
        # Written under a temporary name and renamed: nothing else is left beside it.
        assert local_names(local / "cache") == {"raw/DemoCam/raw_0.fits"}

    def test_fetch_replaces_a_stale_local_copy(self, remote: Remote, local: Path) -> None:
        source = remote.join("raw_1.fits")
        remote.stager.upload(local_file(local / "src", "raw_1.fits", CONTENT), source)
        stale = local_file(local / "cache", "raw_1.fits", b"truncated")
        assert remote.stager.fetch(source, stale) == len(CONTENT)
        assert Path(stale.ospath).read_bytes() == CONTENT

    def test_fetch_of_missing_source_is_a_permanent_error(self, remote: Remote, local: Path) -> None:
        destination = ResourcePath(local / "cache" / "missing.fits")
        with pytest.raises(TransferError) as raised:
            remote.stager.fetch(remote.join("missing.fits"), destination)
        assert raised.value.permanent  # 404: retrying cannot help
        assert "missing.fits" in str(raised.value)
        assert not Path(destination.ospath).exists()
        assert local_names(local) == set()  # no temporary file left behind

    def test_read_of_missing_document_is_a_permanent_error(self, remote: Remote) -> None:
        with pytest.raises(TransferError) as raised:
            remote.stager.read(remote.join("staging/b9/manifest.json"))
        assert raised.value.permanent

    def test_upload_of_missing_local_file_is_a_permanent_error(self, remote: Remote, local: Path) -> None:
        destination = remote.join("staging/never.fits")
        with pytest.raises(TransferError) as raised:
            remote.stager.upload(ResourcePath(local / "never-written.fits"), destination)
        assert raised.value.permanent
        assert not remote.stager.exists(destination)

    def test_commit_makes_the_document_appear_whole(self, remote: Remote) -> None:
        manifest = remote.join("staging/b0/manifest.json")
        stager = remote.stager
        assert not stager.exists(manifest)
        stager.commit(b'{"bundle": "b0"}', manifest)
        assert stager.exists(manifest)
        assert stager.read(manifest) == b'{"bundle": "b0"}'
        # The temporary it may have written first is gone: only the document is there.
        assert remote_names(remote.root) == {"staging/b0/manifest.json"}

    def test_second_commit_replaces_the_first(self, remote: Remote) -> None:
        manifest = remote.join("staging/b1/manifest.json")
        stager = remote.stager
        stager.commit(b"first version, longer than the second", manifest)
        stager.commit(b"second", manifest)
        assert stager.read(manifest) == b"second"
        assert remote_names(remote.root) == {"staging/b1/manifest.json"}

    def test_round_trip_through_the_dbb_side(self, remote: Remote, local: Path) -> None:
        # What a pilot does: upload outputs, commit the manifest, and another job fetches them.
        stager = remote.stager
        payload = remote.join("staging/b2/outputs.zip")
        stager.upload(local_file(local, "outputs.zip", CONTENT), payload)
        stager.commit(b'{"zip": "outputs.zip"}', remote.join("staging/b2/manifest.json"))
        fetched = ResourcePath(local / "elsewhere" / "outputs.zip")
        assert stager.fetch(payload, fetched) == len(CONTENT)
        assert Path(fetched.ospath).read_bytes() == CONTENT
        assert remote_names(remote.root.join("staging/b2/", forceDirectory=True)) == {
            "outputs.zip",
            "manifest.json",
        }


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(LookupError, match="no stager for 'gs' URIs"):
        stager_for(ResourcePath("gs://bucket/dbb/raw.fits"))
