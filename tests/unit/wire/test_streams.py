from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import WireError
from fedsec.wire import streams
from fedsec.wire.fedsec_pb2 import PayloadInfo

PAYLOAD = os.urandom(2 * limits.CHUNK_BYTES + 12345)
LIMIT = 10 * limits.CHUNK_BYTES


def _into_file(tmp_path: Path) -> Callable[[Iterable[bytes], PayloadInfo], bytes]:
    """A receiver that goes through PayloadWriter, so both receivers run the same table."""

    def receive(chunks: Iterable[bytes], info: PayloadInfo) -> bytes:
        dest = tmp_path / "in" / "payload.bin"
        dest.parent.mkdir(exist_ok=True)
        with streams.PayloadWriter(dest, info, LIMIT, "update from site-2") as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish().read_bytes()

    return receive


def _in_memory(tmp_path: Path) -> Callable[[Iterable[bytes], PayloadInfo], bytes]:
    def receive(chunks: Iterable[bytes], info: PayloadInfo) -> bytes:
        return streams.receive_bytes(chunks, info, LIMIT, "update from site-2")

    return receive


RECEIVERS = [_into_file, _in_memory]


def _leftovers(tmp_path: Path) -> list[str]:
    folder = tmp_path / "in"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_describe_file_and_bytes_agree(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    path.write_bytes(PAYLOAD)
    info = streams.describe_file(path)
    assert info.total_size == len(PAYLOAD)
    assert info.sha256 == hashlib.sha256(PAYLOAD).digest()
    assert streams.describe_bytes(PAYLOAD) == info


def test_chunks_are_bounded_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    path.write_bytes(PAYLOAD)
    from_file = list(streams.file_chunks(path))
    from_bytes = list(streams.bytes_chunks(PAYLOAD))
    assert [len(c) for c in from_file] == [limits.CHUNK_BYTES, limits.CHUNK_BYTES, 12345]
    assert from_file == from_bytes
    assert b"".join(streams.bytes_chunks(PAYLOAD, chunk_size=1000)) == PAYLOAD
    assert [len(c) for c in streams.bytes_chunks(b"abcdefg", chunk_size=3)] == [3, 3, 1]


@pytest.mark.parametrize("size", [0, limits.CHUNK_BYTES + 1])
def test_bad_chunk_size_is_refused_at_once(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size must be"):
        streams.bytes_chunks(b"x", size)
    with pytest.raises(ValueError, match="chunk_size must be"):
        streams.file_chunks(tmp_path / "not-there", size)


def test_file_roundtrip_through_writer(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "in" / "dest.bin"
    dest.parent.mkdir()
    info = streams.describe_file(src)
    with streams.PayloadWriter(dest, info, LIMIT, "global model") as writer:
        for chunk in streams.file_chunks(src):
            writer.write(chunk)
        assert writer.received == len(PAYLOAD)
        assert not dest.exists()
        assert writer.finish() == dest
    assert dest.read_bytes() == PAYLOAD
    assert dest.stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path) == ["dest.bin"]


def test_writer_uses_a_private_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 2)
    dest = tmp_path / "in" / "dest.bin"
    dest.parent.mkdir()
    with streams.PayloadWriter(dest, streams.describe_bytes(b"abc"), LIMIT, "x") as writer:
        writer.write(b"ab")
        (tmp,) = dest.parent.iterdir()
        assert tmp.name.startswith(".dest.bin.")
        assert tmp.stat().st_mode & 0o777 == 0o600
        writer.write(b"c")
        writer.finish()
    assert _leftovers(tmp_path) == ["dest.bin"]


@pytest.mark.parametrize("receiver", RECEIVERS)
def test_roundtrip(tmp_path: Path, receiver: Callable[[Path], Callable[[Iterable[bytes], PayloadInfo], bytes]]) -> None:
    receive = receiver(tmp_path)
    assert receive(streams.bytes_chunks(PAYLOAD), streams.describe_bytes(PAYLOAD)) == PAYLOAD
    assert receive(streams.bytes_chunks(b""), streams.describe_bytes(b"")) == b""
    assert receive([b"abc"], streams.describe_bytes(b"abc")) == b"abc"
    small_last = [PAYLOAD[: limits.MIN_CHUNK_BYTES], PAYLOAD[limits.MIN_CHUNK_BYTES : limits.MIN_CHUNK_BYTES + 1]]
    assert receive(small_last, _info(limits.MIN_CHUNK_BYTES + 1, hashlib.sha256(b"".join(small_last)).digest()))


def _info(size: int = len(PAYLOAD), digest: bytes = hashlib.sha256(PAYLOAD).digest()) -> PayloadInfo:
    return PayloadInfo(total_size=size, sha256=digest)


BAD = [
    ("wrong digest", list(streams.bytes_chunks(PAYLOAD)), _info(digest=bytes(32)), "does not match its SHA-256 digest"),
    ("flipped byte", list(streams.bytes_chunks(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))), _info(), "SHA-256 digest"),
    ("too many bytes", [*streams.bytes_chunks(PAYLOAD), b"x"], _info(), f"more data than the announced {len(PAYLOAD)}"),
    ("too few bytes", list(streams.bytes_chunks(PAYLOAD))[:-1], _info(), f"ended after {2 * limits.CHUNK_BYTES} of"),
    ("nothing arrived", [], _info(), f"payload ended after 0 of {len(PAYLOAD)} bytes"),
    (
        "oversized chunk",
        [PAYLOAD[: limits.CHUNK_BYTES + 1]],
        _info(),
        f"chunk of {limits.CHUNK_BYTES + 1} bytes is over the limit",
    ),
    ("empty chunk", [b"", *streams.bytes_chunks(PAYLOAD)], _info(), "an empty chunk"),
    ("empty chunk at the end", [*streams.bytes_chunks(PAYLOAD), b""], _info(), "an empty chunk"),
    ("1-byte chunks", [PAYLOAD[i : i + 1] for i in range(1000)], _info(), "chunk of 1 bytes before the payload's end"),
    (
        "small chunk before the end",
        [PAYLOAD[: limits.MIN_CHUNK_BYTES - 1], PAYLOAD[limits.MIN_CHUNK_BYTES - 1 :]],
        _info(),
        f"every chunk but the last carries at least {limits.MIN_CHUNK_BYTES} bytes",
    ),
    ("bytes for an empty payload", [b"x"], _info(0, hashlib.sha256().digest()), "more data than the announced 0"),
    ("wrong digest, empty", [], _info(0, bytes(32)), "does not match its SHA-256 digest"),
]


@pytest.mark.parametrize("receiver", RECEIVERS)
@pytest.mark.parametrize(("case", "chunks", "info", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_payloads_are_refused(
    tmp_path: Path,
    receiver: Callable[[Path], Callable[[Iterable[bytes], PayloadInfo], bytes]],
    case: str,
    chunks: list[bytes],
    info: PayloadInfo,
    message: str,
) -> None:
    with pytest.raises(WireError, match="^update from site-2: .*" + re.escape(message)):
        receiver(tmp_path)(chunks, info)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (_info(LIMIT + 1), f"payload of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes"),
        (_info(digest=b"\x01" * 31), "payload digest is 31 bytes, expected a 32-byte SHA-256"),
        (_info(digest=b""), "payload digest is 0 bytes"),
    ],
)
def test_bad_info_is_refused_at_construction(tmp_path: Path, info: PayloadInfo, message: str) -> None:
    dest = tmp_path / "dest.bin"
    with pytest.raises(WireError, match="^site-1 job archive: " + re.escape(message)):
        streams.PayloadWriter(dest, info, LIMIT, "site-1 job archive")
    with pytest.raises(WireError, match="^site-1 job archive: " + re.escape(message)):
        streams.receive_bytes(iter(()), info, LIMIT, "site-1 job archive")
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest.bin"
    with pytest.raises(KeyError), streams.PayloadWriter(dest, _info(), LIMIT, "x") as writer:
        writer.write(PAYLOAD[: limits.MIN_CHUNK_BYTES])
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_exit_without_finish_leaves_nothing_and_keeps_old_dest(tmp_path: Path) -> None:
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"old")
    with streams.PayloadWriter(dest, _info(), LIMIT, "x") as writer:
        for chunk in streams.bytes_chunks(PAYLOAD):
            writer.write(chunk)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["dest.bin"]


def test_failed_finish_keeps_old_dest(tmp_path: Path) -> None:
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"old")
    with streams.PayloadWriter(dest, _info(digest=bytes(32)), LIMIT, "x") as writer:
        for chunk in streams.bytes_chunks(PAYLOAD):
            writer.write(chunk)
        with pytest.raises(WireError, match="digest"):
            writer.finish()
        with pytest.raises(RuntimeError, match="not open"):
            writer.finish()
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["dest.bin"]


def test_zero_size_payload_into_file(tmp_path: Path) -> None:
    dest = tmp_path / "empty.bin"
    src = tmp_path / "src.bin"
    src.write_bytes(b"")
    assert list(streams.file_chunks(src)) == []
    with streams.PayloadWriter(dest, streams.describe_file(src), 0, "x") as writer:
        writer.finish()
    assert dest.read_bytes() == b""


def test_writer_only_works_inside_with(tmp_path: Path) -> None:
    dest = tmp_path / "dest.bin"
    writer = streams.PayloadWriter(dest, streams.describe_bytes(b"abc"), LIMIT, "x")
    with pytest.raises(RuntimeError, match="use it in a with block"):
        writer.write(b"abc")
    with writer:
        writer.write(b"abc")
        writer.finish()
        with pytest.raises(RuntimeError, match="not after finish"):
            writer.write(b"abc")
    with pytest.raises(RuntimeError, match="entered only once"), writer:
        pass
    assert dest.read_bytes() == b"abc"


def test_refused_chunk_closes_the_writer_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 2)
    dest = tmp_path / "dest.bin"
    with streams.PayloadWriter(dest, streams.describe_bytes(b"abc"), LIMIT, "x") as writer:
        writer.write(b"ab")
        with pytest.raises(WireError, match="more data than the announced 3 bytes"):
            writer.write(b"cd")
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(RuntimeError, match="not after finish"):
            writer.write(b"c")
    assert not dest.exists()


# ---------------------------------------------------------------- a payload whose size and digest follow it


def _trailed(tmp_path: Path, parts: list[bytes | PayloadInfo], bound: int) -> bytes:
    dest = tmp_path / "streamed.bin"
    with streams.PayloadWriter(dest, PayloadInfo(total_size=bound), 1 << 20, "streamed upload", trailer=True) as w:
        for part in parts:
            w.write(part)
        w.finish()
    return dest.read_bytes()


def test_a_payload_streamed_with_a_trailer_is_received(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 4)
    data = b"abcdefghij"
    trailer = PayloadInfo(total_size=len(data), sha256=hashlib.sha256(data).digest())
    assert _trailed(tmp_path, [data[:4], data[4:8], data[8:], trailer], bound=100) == data


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b"abcd", b"ef"], "no trailer"),
        ([b"abcd", PayloadInfo(total_size=4, sha256=hashlib.sha256(b"abce").digest())], "does not match its SHA"),
        ([b"abcd", PayloadInfo(total_size=5, sha256=hashlib.sha256(b"abcd").digest())], "trailer says 5 bytes"),
        ([b"abcd", PayloadInfo(total_size=4, sha256=b"short")], "trailer digest"),
        ([b"ab", b"cdef", PayloadInfo(total_size=6)], "before the payload's end"),  # a short chunk must be the last
        ([b"abcd", PayloadInfo(total_size=4), b"efgh"], "data after the payload's trailer"),
        ([b"abcd" * 30], "more data than the announced bound of 100 bytes"),
    ],
)
def test_bad_streamed_payloads_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: list[bytes | PayloadInfo], message: str
) -> None:
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 4)
    with pytest.raises(WireError, match=message):
        _trailed(tmp_path, parts, bound=100)
    assert not (tmp_path / "streamed.bin").exists()


def test_a_trailer_is_refused_where_the_header_announced_the_digest(tmp_path: Path) -> None:
    data = b"abcd"
    info = streams.describe_bytes(data)
    with (
        pytest.raises(WireError, match="a trailer after a payload that announced"),
        streams.PayloadWriter(tmp_path / "x", info, 100, "upload") as w,
    ):
        w.write(data)
        w.write(info)
        w.finish()
    with pytest.raises(WireError, match="announces no digest first"):
        streams.PayloadWriter(tmp_path / "y", info, 100, "upload", trailer=True)
