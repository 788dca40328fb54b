"""The blob store: archives, checkpoints and results as files in one folder, streamed in and out.

A key is a relative path of safe names ("jobs/<job id>/job.zip"); nothing outside
the folder can be named. A write goes to a temporary file beside its target, is
hashed and counted as it streams, fsync'd and renamed over the target, so a
reader sees the old blob or the new one, never half of one, and a write past its
limit leaves the old blob as it was. The folder can be shared by several server
replicas (a network file system with atomic rename). Nothing here holds a whole
blob in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from fedsec.errors import JobError, StoreUnavailableError
from fedsec.state.interface import BlobInfo

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_KEY_PARTS = 8
CHUNK = 1 << 20


@contextmanager
def _io(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StoreUnavailableError(f"blob store: {what}: {exc.strerror or exc}") from exc


def check_key(key: str) -> tuple[str, ...]:
    """The parts of key if it is a relative path of safe names; JobError otherwise."""
    parts = tuple(key.split("/")) if isinstance(key, str) else ()
    if not parts or len(parts) > MAX_KEY_PARTS or not all(_PART.fullmatch(p) for p in parts):
        raise JobError(f"blob store: {str(key)[:80]!r} is not a blob key (safe names joined by '/')")
    return parts


class FolderBlobs:
    """A BlobStore in the folder root (made 0700 if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"blob store {self.root}: cannot make it: {exc.strerror or exc}") from exc

    def path(self, key: str) -> Path:
        """Where key's blob is (it may not exist): for a job process that works on local files."""
        return self.root.joinpath(*check_key(key))

    def _target(self, key: str) -> Path:
        path = self.path(key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"blob store: cannot make the folder of {key}: {exc.strerror or exc}") from exc
        return path

    def write(self, key: str, chunks: Iterable[bytes], limit: int) -> BlobInfo:
        path = self._target(key)
        digest, size = hashlib.sha256(), 0
        with _io(f"cannot write {key}"):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:  # what the source raises passes as it is
                    size += len(chunk)
                    if size > limit:
                        raise JobError(f"blob store: {key} is larger than its limit of {limit} bytes")
                    digest.update(chunk)
                    with _io(f"cannot write {key}"):
                        out.write(chunk)
                with _io(f"cannot write {key}"):
                    out.flush()
                    os.fsync(out.fileno())
            with _io(f"cannot write {key}"):
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return BlobInfo(size, digest.digest())

    def adopt(self, key: str, path: Path) -> None:
        target = self._target(key)
        try:
            os.chmod(path, 0o600)
            os.replace(path, target)
        except OSError as exc:
            raise StoreUnavailableError(f"blob store: cannot store {key}: {exc.strerror or exc}") from exc

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        try:
            return cast(AbstractContextManager[BinaryIO], self.path(key).open("rb"))
        except FileNotFoundError:
            raise JobError(f"blob store: no blob {key}") from None
        except OSError as exc:
            raise StoreUnavailableError(f"blob store: cannot read {key}: {exc.strerror or exc}") from exc

    def chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(size):
                yield chunk

    def info(self, key: str) -> BlobInfo | None:
        digest, size = hashlib.sha256(), 0
        try:
            for chunk in self.chunks(key):
                digest.update(chunk)
                size += len(chunk)
        except JobError:
            if not self.path(key).exists():
                return None
            raise
        return BlobInfo(size, digest.digest())

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"blob store: cannot remove {key}: {exc.strerror or exc}") from exc
