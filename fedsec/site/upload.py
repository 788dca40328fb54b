"""An upload sent while it is being made (an HE update, as its ciphertexts are encrypted), kept as it goes.

The first try streams the pieces to the server as they are produced, in chunks of
limits.CHUNK_BYTES, under a header that announces only an upper bound of the size
(ResultHeader.payload_trailer) and ends with a trailer giving the size and SHA-256. Each
chunk is also appended to a file (0600) before it is sent, so a retry (fedsec.site.transfer)
finishes the file and sends it whole, with its size and digest up front: the upload is made
once, whatever the link does. Memory stays one chunk and one piece, whatever the upload's size.

This module never decides what is uploaded, nor where to: callers give the pieces and the folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from fedsec import limits
from fedsec.errors import WireError
from fedsec.wire import fedsec_pb2, streams


class StreamedUpload:
    """One upload: header, the pieces as they come (bound: at most that many bytes), kept in folder."""

    def __init__(self, header: fedsec_pb2.ResultHeader, pieces: Iterator[bytes], bound: int, folder: Path) -> None:
        self._header = header
        self._pieces = pieces
        self._bound = bound
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._done = False
        self._started = False
        self.error: BaseException | None = None  # what making the pieces raised, raised again to every later try
        self._lock = threading.Lock()

    def __enter__(self) -> StreamedUpload:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove the kept file."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def parts(self) -> Iterator[fedsec_pb2.ResultPart]:
        """One try's request stream: the first streams as the pieces come; later ones send the finished file."""
        with self._lock:
            first, self._started = not self._started, True
        if first:
            return self._streamed()
        self._drain()
        header = fedsec_pb2.ResultHeader()
        header.CopyFrom(self._header)
        header.payload.CopyFrom(self.info())
        header.payload_trailer = False
        return _parts(header, streams.file_chunks(self.path))

    def info(self) -> fedsec_pb2.PayloadInfo:
        """The size and SHA-256 of what was made so far (all of it once the pieces ran out)."""
        return fedsec_pb2.PayloadInfo(total_size=self._size, sha256=self._digest.digest())

    def _streamed(self) -> Iterator[fedsec_pb2.ResultPart]:
        header = fedsec_pb2.ResultHeader()
        header.CopyFrom(self._header)
        header.payload.CopyFrom(fedsec_pb2.PayloadInfo(total_size=self._bound))
        header.payload_trailer = True
        yield fedsec_pb2.ResultPart(header=header)
        while (chunk := self._next()) is not None:
            yield fedsec_pb2.ResultPart(data=chunk)
        yield fedsec_pb2.ResultPart(trailer=self.info())

    def _drain(self) -> None:
        """Make (and keep) the rest of the upload; raises what making it raised."""
        while self._next() is not None:
            pass

    def _next(self) -> bytes | None:
        """The next chunk, kept in the file first; None once all is made. Raises what making it raised."""
        with self._lock:
            if self.error is not None:
                raise self.error
            try:
                while not self._done and len(self._buffer) < limits.CHUNK_BYTES:
                    piece = next(self._pieces, None)
                    if piece is None:
                        self._done = True
                    else:
                        self._buffer += piece
            except BaseException as exc:
                self.error = exc
                raise
            if not self._buffer:
                self._file.flush()
                return None
            chunk = bytes(self._buffer[: limits.CHUNK_BYTES])
            del self._buffer[: limits.CHUNK_BYTES]
            if self._size + len(chunk) > self._bound:
                self.error = WireError(f"upload: more than its announced bound of {self._bound} bytes")
                raise self.error
            self._file.write(chunk)
            self._digest.update(chunk)
            self._size += len(chunk)
            return chunk


def _parts(header: fedsec_pb2.ResultHeader, chunks: Iterator[bytes]) -> Iterator[fedsec_pb2.ResultPart]:
    yield fedsec_pb2.ResultPart(header=header)
    for chunk in chunks:
        yield fedsec_pb2.ResultPart(data=chunk)
