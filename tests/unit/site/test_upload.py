"""An upload sent as it is made: chunks leave before the last piece exists; a retry sends the kept file whole."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import HEError
from fedsec.site.upload import StreamedUpload
from fedsec.wire import fedsec_pb2, streams

PIECE = 300 << 10  # about five ciphertext records


def _pieces(count: int, made: list[int], fail_at: int | None = None) -> Iterator[bytes]:
    for i in range(count):
        if i == fail_at:
            raise HEError("encrypt: TenSEAL failed: out of memory")
        made.append(i)
        yield bytes([i]) * PIECE


def _receive(tmp_path: Path, parts: Iterator[fedsec_pb2.ResultPart]) -> bytes:
    """What the server's workflow does with the stream: a PayloadWriter fed data, then the trailer if any."""
    header = next(parts).header
    dest = tmp_path / "received"
    with streams.PayloadWriter(dest, header.payload, limits.MAX_MODEL_BYTES, "upload", header.payload_trailer) as w:
        for part in parts:
            w.write(part.data if part.WhichOneof("part") == "data" else part.trailer)
        w.finish()
    return dest.read_bytes()


def test_the_first_chunk_leaves_before_the_last_piece_is_made(tmp_path: Path) -> None:
    made: list[int] = []
    with StreamedUpload(fedsec_pb2.ResultHeader(current_round=2), _pieces(10, made), 10 * PIECE, tmp_path) as up:
        parts = up.parts()
        header = next(parts).header
        assert header.payload_trailer and header.payload.total_size == 10 * PIECE and not header.payload.sha256
        first = next(parts)
        assert len(first.data) == limits.CHUNK_BYTES
        assert len(made) < 10  # sent while the rest is still to be made
        rest = list(parts)
    assert rest[-1].WhichOneof("part") == "trailer"
    whole = b"".join(bytes([i]) * PIECE for i in range(10))
    assert first.data + b"".join(p.data for p in rest[:-1]) == whole
    assert rest[-1].trailer == streams.describe_bytes(whole)
    assert _receive(tmp_path, iter([fedsec_pb2.ResultPart(header=header), first, *rest])) == whole
    assert list(tmp_path.iterdir()) == [tmp_path / "received"]  # the kept file went with the upload


def test_a_retry_after_a_cut_sends_the_kept_file_with_its_digest(tmp_path: Path) -> None:
    made: list[int] = []
    whole = b"".join(bytes([i]) * PIECE for i in range(10))
    with StreamedUpload(fedsec_pb2.ResultHeader(current_round=2), _pieces(10, made), 10 * PIECE, tmp_path) as up:
        first_try = up.parts()
        next(first_try), next(first_try)  # the link broke after the first chunk
        second_try = up.parts()
        header = next(second_try).header
        assert not header.payload_trailer
        assert header.payload.total_size == len(whole)
        assert header.payload.sha256 == hashlib.sha256(whole).digest()
        assert made == list(range(10))  # each piece made once
        assert _receive(tmp_path, iter([fedsec_pb2.ResultPart(header=header), *second_try])) == whole


def test_a_failure_to_make_a_piece_is_raised_to_every_try(tmp_path: Path) -> None:
    made: list[int] = []
    with StreamedUpload(fedsec_pb2.ResultHeader(), _pieces(10, made, fail_at=6), 10 * PIECE, tmp_path) as up:
        with pytest.raises(HEError, match="TenSEAL failed"):
            list(up.parts())
        with pytest.raises(HEError, match="TenSEAL failed"):
            up.parts()
        assert isinstance(up.error, HEError)
