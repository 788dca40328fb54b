"""Site transfers: which gRPC errors are retried, backoff until a deadline, and a job archive resumed by offset."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedsec import limits
from fedsec.errors import AuthError, FedsecError, TransferInterruptedError, WireError
from fedsec.site import transfer
from fedsec.site.transfer import ArchiveDownload, GaveUpError, retry
from fedsec.transport.tls import transient
from fedsec.wire import fedsec_pb2


class RpcFailure(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call as grpc raises it: an RpcError that is also a Call with a code and details."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (S.UNAVAILABLE, "failed to connect", True),
        (S.DEADLINE_EXCEEDED, "", True),
        (S.CANCELLED, "", True),
        (S.RESOURCE_EXHAUSTED, "too many calls", True),
        (S.INTERNAL, "Stream removed (recvmsg:Connection reset by peer (104))", True),
        (S.INTERNAL, "connection reset", True),
        (S.INTERNAL, "internal error on the server (see its log)", False),
        (S.PERMISSION_DENIED, "job x is not assigned to site-1", False),
        (S.INVALID_ARGUMENT, "bad", False),
        (S.FAILED_PRECONDITION, "never fetched", False),
        (S.UNAUTHENTICATED, "", False),
    ],
)
def test_transient_classifies_grpc_errors(code: grpc.StatusCode, details: str, expected: bool) -> None:
    assert transient(RpcFailure(code, details)) is expected


def test_transient_is_false_for_anything_but_a_grpc_error() -> None:
    assert not transient(OSError("Connection reset by peer"))


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "FIRST_DELAY", 0.001)
    monkeypatch.setattr(transfer, "MAX_DELAY", 0.002)


def test_retry_tries_again_after_transient_errors() -> None:
    failures: list[Exception] = [
        RpcFailure(S.UNAVAILABLE),
        TransferInterruptedError("cut"),
        RpcFailure(S.INTERNAL, "Stream removed"),
    ]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert retry(call, "upload", time.monotonic() + 60) == "done"


def test_retry_gives_up_at_once_on_a_final_error() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise RpcFailure(S.PERMISSION_DENIED, "job j is not assigned to site-1")

    with pytest.raises(AuthError, match="upload: job j is not assigned"):
        retry(call, "upload", time.monotonic() + 60)
    assert len(calls) == 1


def test_retry_gives_up_past_its_deadline_with_the_last_error() -> None:
    def call() -> None:
        raise RpcFailure(S.UNAVAILABLE, "failed to connect")

    with pytest.raises(FedsecError, match="report job j: failed to connect"):
        retry(call, "report job j", time.monotonic() - 1)


def test_retry_stops_when_no_longer_wanted() -> None:
    stop = threading.Event()
    stop.set()

    def call() -> None:
        raise RpcFailure(S.UNAVAILABLE)

    with pytest.raises(GaveUpError):
        retry(call, "fetch job j", float("inf"), stop=stop)
    with pytest.raises(GaveUpError):
        retry(call, "fetch job j", float("inf"), wanted=lambda: False)


ARCHIVE = bytes(range(256)) * 9000  # a little over 2 chunks


def _signature() -> fedsec_pb2.JobSignature:
    return fedsec_pb2.JobSignature(signature=b"s", signer_cert=b"c", job_id="job-1", submit_time=1)


class FakeServer:
    """FetchJob as the server serves it, cut after cut_at bytes on the calls listed in cuts."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.data = data
        self.cuts = cuts
        self.offsets: list[int] = []

    def FetchJob(self, request: fedsec_pb2.FetchJobRequest, timeout: float | None = None) -> Any:
        self.offsets.append(request.offset)
        cut = self.cuts.pop(0) if self.cuts else None
        return _Stream(self._parts(request.offset, cut))

    def _parts(self, offset: int, cut: int | None) -> Iterator[fedsec_pb2.ArchivePart]:
        info = fedsec_pb2.PayloadInfo(total_size=len(self.data), sha256=hashlib.sha256(self.data).digest())
        yield fedsec_pb2.ArchivePart(info=info, signature=_signature())
        sent = offset
        for i in range(offset, len(self.data), limits.CHUNK_BYTES):
            if cut is not None and sent >= cut:
                raise RpcFailure(S.INTERNAL, "Stream removed (recvmsg:Connection reset by peer)")
            chunk = self.data[i : i + limits.CHUNK_BYTES]
            sent += len(chunk)
            yield fedsec_pb2.ArchivePart(data=chunk)


class _Stream:
    def __init__(self, parts: Iterator[fedsec_pb2.ArchivePart]) -> None:
        self._parts = parts

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> fedsec_pb2.ArchivePart:
        return next(self._parts)

    def cancel(self) -> None:
        pass


def _download(server: FakeServer, tmp_path: Path) -> tuple[bytes, Any]:
    download = ArchiveDownload(lambda: server, "job-1", tmp_path / "fetch")  # type: ignore[arg-type,return-value]
    return download.run(float("inf"), lambda: True, threading.Event())


def test_an_archive_download_resumes_from_what_arrived(tmp_path: Path) -> None:
    server = FakeServer(ARCHIVE, cuts=[limits.CHUNK_BYTES, 2 * limits.CHUNK_BYTES])
    data, signature = _download(server, tmp_path)
    assert data == ARCHIVE
    assert signature.job_id == "job-1"
    assert server.offsets == [0, limits.CHUNK_BYTES, 2 * limits.CHUNK_BYTES]
    assert list((tmp_path / "fetch").iterdir()) == []  # the part file is gone


def test_an_archive_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    server = FakeServer(ARCHIVE, cuts=[limits.CHUNK_BYTES])
    real = server._parts

    def tampered(offset: int, cut: int | None) -> Iterator[fedsec_pb2.ArchivePart]:
        for part in real(offset, cut):
            if offset and part.WhichOneof("part") == "data":
                part.data = bytes(len(part.data))  # the resumed bytes are not the archive's
            yield part

    server._parts = tampered  # type: ignore[method-assign]
    with pytest.raises(WireError, match="does not match its size and SHA-256"):
        _download(server, tmp_path)


def test_an_oversized_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    server = FakeServer(ARCHIVE, cuts=[])
    info = fedsec_pb2.PayloadInfo(total_size=limits.MAX_JOB_ARCHIVE_BYTES + 1, sha256=bytes(32))
    server._parts = lambda offset, cut: iter([fedsec_pb2.ArchivePart(info=info, signature=_signature())])  # type: ignore[method-assign]
    with pytest.raises(WireError, match="over the limit"):
        _download(server, tmp_path)
