"""Site-server transfers that survive a bad link: calls retried with backoff, job archives resumed.

A transfer retries what fedsec.transport.tls.transient calls transient (a
reset, a cut stream, a server that is down or busy) with exponential backoff,
and gives up on a final error at once, or on a transient one once its
deadline (set by the job, or by whoever waits on the transfer) has passed. A
job archive's download keeps what arrived in a part file (0600) and asks the
server for the rest from that offset; it trusts nothing until the whole file
matches the size and SHA-256 the server announced.

This module never decides what a transfer is for: callers give the call,
the deadline and what makes them give up early.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc

from fedsec import _fs, limits
from fedsec.errors import FedsecError, JobError, TransferInterruptedError, WireError
from fedsec.transport.tls import error_from_rpc, transient
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc

if TYPE_CHECKING:
    from fedsec.jobs.signing import JobSignature

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY = 0.2  # seconds before the first retry; doubled after each failure
MAX_DELAY = 5.0  # the longest wait between two tries
_SHA256_BYTES = 32

Stub = Callable[[], fedsec_pb2_grpc.FederationStub]


class GaveUpError(FedsecError):
    """A transfer stopped because its caller no longer wants it (the job is no longer assigned, the site stops)."""


def retry(
    call: Callable[[], T],
    what: str,
    deadline: float,
    wanted: Callable[[], bool] = lambda: True,
    stop: threading.Event | None = None,
) -> T:
    """call() until it succeeds; transient errors are retried with backoff until deadline (time.monotonic()).

    TransferInterruptedError from call() (a stream cut short) counts as transient.
    Raises the fedsec error of the last failure (error_from_rpc) when it is final
    or the deadline has passed, GaveUpError when wanted() turns false or stop is set.
    """
    delay = FIRST_DELAY
    sleeper = stop or threading.Event()
    while True:
        try:
            return call()
        except (grpc.RpcError, TransferInterruptedError) as exc:
            error = error_from_rpc(exc, what) if isinstance(exc, grpc.RpcError) else exc
            again = isinstance(exc, TransferInterruptedError) or transient(exc)
            if not again or time.monotonic() + delay > deadline:
                raise error from exc
            log.info("%s failed (%s); trying again in %.1f s", what, _short(error), delay)
        if not wanted() or sleeper.wait(delay) or not wanted():
            raise GaveUpError(f"{what}: no longer wanted")
        delay = min(delay * 2, MAX_DELAY)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class ArchiveDownload:
    """One job archive's download into part_dir/<job_id>.part, resumed from what arrived after a failure."""

    def __init__(self, stub: Stub, job_id: str, part_dir: Path) -> None:
        self._stub = stub
        self._job_id = job_id
        self._where = f"job {job_id} archive"
        part_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._part = part_dir / f"{_fs.check_name('job id', job_id)}.part"
        self._part.unlink(missing_ok=True)  # a part file of an earlier run of this site: its archive is unknown
        self._info: fedsec_pb2.PayloadInfo | None = None
        self._signature: JobSignature | None = None
        self.fetched = 0  # the archive bytes that crossed the link, every try counted

    @property
    def received(self) -> int:
        """The bytes of the archive kept so far."""
        return self._part.stat().st_size if self._info is not None and self._part.exists() else 0

    def run(self, deadline: float, wanted: Callable[[], bool], stop: threading.Event) -> tuple[bytes, JobSignature]:
        """The whole archive and its signature, fetched with retries and resumed after each cut.

        Raises WireError when the server breaks the protocol or the archive does not
        match its digest, GaveUpError when wanted() turns false, and the fedsec error
        of a final failure (or of the last one past deadline).
        """
        try:
            archive, signature = retry(self._attempt, f"fetch job {self._job_id}", deadline, wanted, stop)
        finally:
            self._part.unlink(missing_ok=True)
        log.info("job=%s archive of %d bytes fetched with %d bytes down", self._job_id, len(archive), self.fetched)
        return archive, signature

    def _attempt(self) -> tuple[bytes, JobSignature]:
        from fedsec.jobs.signing import JobSignature  # the jobs package comes with the first job, not at start

        offset = self.received
        parts = self._stub().FetchJob(fedsec_pb2.FetchJobRequest(job_id=self._job_id, offset=offset), timeout=None)
        try:
            first = next(parts)
            if first.WhichOneof("part") != "info" or not first.HasField("signature"):
                raise WireError(f"{self._where}: the stream did not start with its size and signature")
            info, sig = first.info, first.signature
            signature = JobSignature(sig.signature, sig.signer_cert, sig.job_id, sig.submit_time)
            _check_info(info, self._where)
            if self._info is not None and (self._info != info or self._signature != signature):
                log.info("%s changed on the server: downloading it again", self._where)
                self._info = None
                raise TransferInterruptedError(f"{self._where}: changed while it was downloaded")
            if self._info is None:
                self._info, self._signature = info, signature
                offset = 0
            elif offset:
                log.info("%s: resuming from byte %d of %d", self._where, offset, info.total_size)
            self._append(offset, info.total_size, (p.data for p in parts))
        finally:
            parts.cancel()
        return self._finish(info), signature

    def _append(self, offset: int, total: int, chunks: Iterator[bytes]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC)
        fd = os.open(self._part, flags, 0o600)
        with os.fdopen(fd, "ab" if offset else "wb") as f:
            received = offset
            for chunk in chunks:
                if len(chunk) > limits.CHUNK_BYTES:
                    raise WireError(f"{self._where}: chunk of {len(chunk)} bytes is over {limits.CHUNK_BYTES}")
                if received + len(chunk) > total:
                    raise WireError(f"{self._where}: more data than the announced {total} bytes")
                f.write(chunk)
                f.flush()  # what arrived is kept for the next try, even when the stream breaks now
                received += len(chunk)
                self.fetched += len(chunk)
        if received < total:
            raise TransferInterruptedError(f"{self._where}: the stream ended after {received} of {total} bytes")

    def _finish(self, info: fedsec_pb2.PayloadInfo) -> bytes:
        data = _fs.read_bounded(self._part, limits.MAX_JOB_ARCHIVE_BYTES, self._where, JobError)
        if len(data) != info.total_size or not hmac.compare_digest(hashlib.sha256(data).digest(), info.sha256):
            self._info = None
            raise WireError(f"{self._where}: the download does not match its size and SHA-256 digest")
        return data


def _check_info(info: fedsec_pb2.PayloadInfo, where: str) -> None:
    if info.total_size > limits.MAX_JOB_ARCHIVE_BYTES:
        raise WireError(f"{where}: {info.total_size} bytes is over the limit of {limits.MAX_JOB_ARCHIVE_BYTES} bytes")
    if len(info.sha256) != _SHA256_BYTES:
        raise WireError(f"{where}: digest is {len(info.sha256)} bytes, expected a 32-byte SHA-256")
