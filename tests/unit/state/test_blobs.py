"""The folder blob store: keys, streamed atomic writes, limits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsec.errors import JobError
from fedsec.state.blobs import FolderBlobs
from fedsec.state.interface import BlobInfo, BlobStore


def pieces(n: int, size: int = 1 << 16) -> Iterator[bytes]:
    for i in range(n):
        yield bytes([i % 256]) * size


def test_write_streams_and_reads_back(tmp_path: Path) -> None:
    blobs: BlobStore = FolderBlobs(tmp_path)
    expected = b"".join(pieces(20))
    info = blobs.write("jobs/abc/job.zip", pieces(20), limit=len(expected))
    assert info == BlobInfo(len(expected), hashlib.sha256(expected).digest())
    assert b"".join(blobs.chunks("jobs/abc/job.zip", 1000)) == expected
    with blobs.open("jobs/abc/job.zip") as f:
        assert f.read(3) == b"\x00\x00\x00"
    assert blobs.info("jobs/abc/job.zip") == info
    assert (tmp_path / "jobs" / "abc" / "job.zip").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "jobs" / "abc").stat().st_mode & 0o777 == 0o700


def test_a_write_past_its_limit_keeps_the_old_blob(tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path)
    blobs.write("a/b", [b"old"], limit=10)
    with pytest.raises(JobError, match="a/b is larger than its limit of 100 bytes"):
        blobs.write("a/b", pieces(3, 60), limit=100)
    assert b"".join(blobs.chunks("a/b")) == b"old"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]  # no temporary file left


def test_a_broken_stream_keeps_the_old_blob(tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path)
    blobs.write("a/b", [b"old"], limit=10)

    def broken() -> Iterator[bytes]:
        yield b"new"
        raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError):
        blobs.write("a/b", broken(), limit=10)
    assert b"".join(blobs.chunks("a/b")) == b"old" and len(list((tmp_path / "a").iterdir())) == 1


def test_adopt_delete_and_missing(tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path / "store")
    staged = tmp_path / "staged.zip"
    staged.write_bytes(b"zip")
    blobs.adopt("jobs/x/job.zip", staged)
    assert not staged.exists() and b"".join(blobs.chunks("jobs/x/job.zip")) == b"zip"
    blobs.delete("jobs/x/job.zip")
    blobs.delete("jobs/x/job.zip")  # twice is fine
    assert blobs.info("jobs/x/job.zip") is None
    with pytest.raises(JobError, match="no blob jobs/x/job.zip"):
        blobs.open("jobs/x/job.zip")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "a/../b", "a//b", ".hidden", "a/.b", "a\\b", "a/b/", "x" * 200]
)
def test_keys_cannot_leave_the_folder(tmp_path: Path, key: str) -> None:
    with pytest.raises(JobError, match="is not a blob key"):
        FolderBlobs(tmp_path).write(key, [b"x"], limit=10)
    assert list(tmp_path.iterdir()) == []
