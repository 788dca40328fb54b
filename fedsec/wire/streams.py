"""Chunked payloads: a file or bytes sent as chunks, and chunks received into a file or bytes.

A payload is announced by a PayloadInfo (total size and SHA-256) and then travels as
chunks of at most limits.CHUNK_BYTES. The receiving side checks the announced size against
the caller's limit before it takes any space, refuses an oversized chunk, an empty one, a
chunk under limits.MIN_CHUNK_BYTES that is not the last (so the number of chunks is bounded
by the announced size) and any byte past the announced size, and lets a payload out (a file
renamed into place, bytes returned) only once its size and digest match.

This module never imports grpc (the services do the streaming) and never interprets the
bytes it carries.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from fedsec import limits
from fedsec.errors import TransferInterruptedError, WireError
from fedsec.wire.fedsec_pb2 import PayloadInfo

FILE_MODE = 0o600
SHA256_BYTES = 32


def describe_file(path: Path) -> PayloadInfo:
    """The size and SHA-256 of the file at path, read in chunks; OSError if it cannot be read."""
    with path.open("rb") as f:
        return describe_stream(f)


def describe_stream(f: BinaryIO) -> PayloadInfo:
    """The size and SHA-256 of what is left to read in f, read in chunks (f is left at its end)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := f.read(limits.CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return PayloadInfo(total_size=size, sha256=digest.digest())


def describe_bytes(data: bytes) -> PayloadInfo:
    """The size and SHA-256 of data."""
    return PayloadInfo(total_size=len(data), sha256=hashlib.sha256(data).digest())


def held_digests(digests: Sequence[bytes], where: str) -> frozenset[bytes]:
    """The model digests a task request names as held by its site (TaskRequest.held_sha256).

    Raises WireError when there are more than limits.MAX_HELD_MODELS or one is not a 32-byte SHA-256.
    """
    if len(digests) > limits.MAX_HELD_MODELS:
        raise WireError(f"{where}: names {len(digests)} held models, over the limit of {limits.MAX_HELD_MODELS}")
    if any(len(digest) != SHA256_BYTES for digest in digests):
        raise WireError(f"{where}: a held model's digest is not a 32-byte SHA-256")
    return frozenset(bytes(digest) for digest in digests)


def file_chunks(path: Path, chunk_size: int = limits.CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the content of the file at path in chunks of chunk_size bytes (the last may be shorter).

    An empty file yields nothing. Raises ValueError at once if chunk_size is not in
    1..limits.CHUNK_BYTES; OSError (while iterating) if the file cannot be read.
    """
    _check_chunk_size(chunk_size)
    return _file_chunks(path, chunk_size)


def _file_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def bytes_chunks(data: bytes, chunk_size: int = limits.CHUNK_BYTES) -> Iterator[bytes]:
    """Yield data in chunks of chunk_size bytes (the last may be shorter); empty data yields nothing.

    Raises ValueError at once if chunk_size is not in 1..limits.CHUNK_BYTES.
    """
    _check_chunk_size(chunk_size)
    return (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))


def _check_chunk_size(chunk_size: int) -> None:
    if not 0 < chunk_size <= limits.CHUNK_BYTES:
        raise ValueError(f"chunk_size must be 1..{limits.CHUNK_BYTES}, got {chunk_size}")


class _Receipt:
    """What has arrived of an announced payload: checks each chunk, then the whole.

    With trailer, the announced size is only an upper bound and the size and digest come after
    the data (check_complete(trailer)); a chunk under limits.MIN_CHUNK_BYTES must then be the last.
    """

    def __init__(self, info: PayloadInfo, limit: int, where: str, trailer: bool = False) -> None:
        if info.total_size > limit:
            raise WireError(f"{where}: payload of {info.total_size} bytes is over the limit of {limit} bytes")
        if trailer and info.sha256:
            raise WireError(f"{where}: a payload whose digest follows it announces no digest first")
        if not trailer and len(info.sha256) != SHA256_BYTES:
            raise WireError(f"{where}: payload digest is {len(info.sha256)} bytes, expected a 32-byte SHA-256")
        self.where = where
        self.total: int = info.total_size
        self.trailer = trailer
        self.expected_digest = bytes(info.sha256)
        self.received = 0
        self._short = False  # a chunk under MIN_CHUNK_BYTES arrived: it must have been the last
        self._digest = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        if len(chunk) > limits.CHUNK_BYTES:
            raise WireError(f"{self.where}: chunk of {len(chunk)} bytes is over the limit of {limits.CHUNK_BYTES}")
        if self.received + len(chunk) > self.total:
            what = "the announced bound of" if self.trailer else "the announced"
            raise WireError(f"{self.where}: more data than {what} {self.total} bytes")
        if not chunk:
            raise WireError(f"{self.where}: an empty chunk")
        short = len(chunk) < limits.MIN_CHUNK_BYTES
        if self._short or (short and not self.trailer and self.received + len(chunk) != self.total):
            raise WireError(
                f"{self.where}: chunk of {len(chunk)} bytes before the payload's end; every chunk but the last"
                f" carries at least {limits.MIN_CHUNK_BYTES} bytes"
            )
        self._short = short
        self._digest.update(chunk)
        self.received += len(chunk)

    def check_complete(self, trailer: PayloadInfo | None = None) -> None:
        """Raise unless the whole payload arrived: its announced size and digest, or its trailer's."""
        if self.trailer:
            if trailer is None:
                raise TransferInterruptedError(f"{self.where}: payload ended after {self.received} bytes, no trailer")
            if len(trailer.sha256) != SHA256_BYTES:
                raise WireError(f"{self.where}: trailer digest is {len(trailer.sha256)} bytes, not a SHA-256")
            if trailer.total_size != self.received:
                raise WireError(f"{self.where}: trailer says {trailer.total_size} bytes, {self.received} arrived")
            expected = bytes(trailer.sha256)
        else:
            if trailer is not None:
                raise WireError(f"{self.where}: a trailer after a payload that announced its size and digest")
            if self.received != self.total:
                raise TransferInterruptedError(
                    f"{self.where}: payload ended after {self.received} of {self.total} bytes"
                )
            expected = self.expected_digest
        if not hmac.compare_digest(self._digest.digest(), expected):
            raise WireError(f"{self.where}: payload does not match its SHA-256 digest")


class PayloadWriter:
    """Receive an announced payload into a file, in a with block::

        with PayloadWriter(dest, info, limits.MAX_MODEL_BYTES, "update from site-1") as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish()

    Chunks go to a temporary file (mode 0600) next to dest; finish() renames it to dest once
    the size and digest match. If the block is left without finish(), or anything fails,
    the temporary file is removed and dest is left as it was. After an error in write() or
    finish() the writer is closed: a later call raises RuntimeError.
    """

    def __init__(self, dest: Path, info: PayloadInfo, limit: int, where: str, trailer: bool = False) -> None:
        """Raise WireError if info announces more than limit bytes or its digest is not 32 bytes.

        trailer: info.total_size is only a bound (info.sha256 empty); the size and digest come
        after the data, handed to write() as a PayloadInfo.
        """
        self._receipt = _Receipt(info, limit, where, trailer)
        self._trailer: PayloadInfo | None = None
        self._dest = dest
        self._tmp: Path | None = None  # set while the temporary file exists
        self._file: IO[bytes] | None = None  # set while it is open for writing
        self._entered = False

    def __enter__(self) -> PayloadWriter:
        """Create the temporary file; OSError if it cannot be created."""
        if self._entered:
            raise RuntimeError("a PayloadWriter can be entered only once")
        self._entered = True
        fd, tmp = tempfile.mkstemp(dir=self._dest.parent, prefix=f".{self._dest.name}.", suffix=".part")
        self._tmp = Path(tmp)
        try:
            os.fchmod(fd, FILE_MODE)
            self._file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._discard()

    @property
    def received(self) -> int:
        """The number of bytes written so far."""
        return self._receipt.received

    def write(self, chunk: bytes | PayloadInfo) -> None:
        """Append a chunk; a PayloadInfo is the trailer of a payload whose size and digest follow it.

        Raises WireError if it is larger than limits.CHUNK_BYTES, empty, smaller than
        limits.MIN_CHUNK_BYTES without ending the payload, goes past the announced size, or comes
        after the trailer (or is a second one), OSError if it cannot be written; either closes the writer.
        """
        f, _ = self._open_file()
        try:
            if self._trailer is not None:
                raise WireError(f"{self._receipt.where}: data after the payload's trailer")
            if isinstance(chunk, PayloadInfo):
                self._trailer = chunk
                return
            self._receipt.add(chunk)
            f.write(chunk)
        except BaseException:
            self._discard()
            raise

    def finish(self) -> Path:
        """Check size and digest, then move the payload into place at dest and return dest.

        Raises TransferInterruptedError (a WireError) if fewer bytes than announced arrived,
        WireError if the digest does not match, OSError if the file cannot be written or renamed;
        either leaves dest as it was.
        """
        f, tmp = self._open_file()
        try:
            self._receipt.check_complete(self._trailer)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, self._dest)
        except BaseException:
            self._discard()
            raise
        self._file = None
        self._tmp = None
        return self._dest

    def _open_file(self) -> tuple[IO[bytes], Path]:
        if self._file is None or self._tmp is None:
            raise RuntimeError(
                f"PayloadWriter for {self._receipt.where} is not open: use it in a with block, "
                "and not after finish() or an error"
            )
        return self._file, self._tmp

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def receive_bytes(chunks: Iterable[bytes], info: PayloadInfo, limit: int, where: str) -> bytes:
    """Collect an announced payload from chunks into memory (for small payloads).

    Raises WireError if info announces more than limit bytes or has a bad digest length,
    a chunk is larger than limits.CHUNK_BYTES, empty, or under limits.MIN_CHUNK_BYTES before the end,
    more or fewer bytes than announced arrive,
    or the digest does not match.
    """
    receipt = _Receipt(info, limit, where)
    data = bytearray()
    for chunk in chunks:
        receipt.add(chunk)
        data += chunk
    receipt.check_complete()
    return bytes(data)
