"""A site's job logs on their way to the server: what each job's script writes, sent while it runs and at its end.

The job runner (fedsec.site.runner) tells the LogShipper when a run of a job's script starts (the log
file it writes) and when it ends (exited, failed, or stopped because the job was aborted). Every
limits.LOG_SHIP_SECONDS the shipper sends what each run's log gained since the server's last
acknowledgement (AppendJobLog, at most limits.MAX_LOG_CHUNK_BYTES a call, over the site's own
connection: the server knows the site only from its certificate). A run that ended is sent to its end
at once, marked last, before the runner reports the end (and may start the script again); then it is
forgotten. Each run has a random id and every piece its offset in that run, so a retry never stores a
byte twice. A run the server will take no more of (its cap, or a refusal) is dropped. The server may
be down: that only delays the log, never the job. This module never reads a path the job names.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fedsec import limits
from fedsec.transport.tls import error_from_rpc, transient
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc

log = logging.getLogger(__name__)

Upstream = Callable[[], fedsec_pb2_grpc.FederationStub]
END_SECONDS = 10.0  # how long the end of a run's log is tried at its end before the runner goes on
KEEP_ENDED_SECONDS = 600.0  # how long the end of a run's log is tried again in the background
_CHUNKS_PER_PASS = 64  # pieces one run sends in one pass (others wait for the next)


@dataclass
class _Run:
    job_id: str
    run: str
    path: Path
    offset: int = 0  # what the server acknowledged
    ended_at: float | None = None  # time.monotonic() when the script ended
    dropped: bool = False  # the server takes no more of it (its cap, the run's end, or a refusal)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LogShipper:
    """Sends the logs of one site's job runs to the server (see the module docstring)."""

    def __init__(self, site: str, upstream: Upstream) -> None:
        self._site = site
        self._upstream = upstream
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}  # job id -> its latest run
        self._ending: list[_Run] = []  # earlier runs whose end was not sent yet
        self._due = threading.Event()

    def watch(self, job_id: str, path: Path) -> str:
        """A run of job_id's script started, writing its log to path; the run's id."""
        run = _Run(job_id, secrets.token_hex(8), path)
        with self._lock:
            earlier = self._runs.pop(job_id, None)
            if earlier is not None:
                earlier.ended_at = earlier.ended_at or time.monotonic()
                self._ending.append(earlier)
            self._runs[job_id] = run
        return run.run

    def ended(self, job_id: str) -> None:
        """job_id's script ended: send the rest of its log now (up to END_SECONDS), and later if that fails."""
        with self._lock:
            run = self._runs.pop(job_id, None)
            if run is None:
                return
            run.ended_at = time.monotonic()
            self._ending.append(run)
        deadline = time.monotonic() + END_SECONDS
        while time.monotonic() < deadline:
            if self._ship(run):
                with self._lock:
                    self._ending = [r for r in self._ending if r is not run]
                return
            time.sleep(0.5)

    def run(self, stop: threading.Event) -> None:
        """Send new lines every limits.LOG_SHIP_SECONDS until stop is set."""
        while not stop.wait(limits.LOG_SHIP_SECONDS):
            self.ship_once()

    def ship_once(self) -> None:
        """One pass: each run sends what it gained; ended runs that are done (or too old) are forgotten."""
        with self._lock:
            runs = [*self._runs.values(), *self._ending]
        done = []
        now = time.monotonic()
        for run in runs:
            if self._ship(run) and run.ended_at is not None:
                done.append(run)
            elif run.ended_at is not None and now - run.ended_at > KEEP_ENDED_SECONDS:
                log.info("job=%s the end of its log was not sent: the server could not be reached", run.job_id)
                done.append(run)
        with self._lock:
            self._ending = [r for r in self._ending if r not in done]

    def _ship(self, run: _Run) -> bool:
        """Send what run's log gained; True when nothing is left to send (or the server takes no more)."""
        with run.lock:
            if run.dropped:
                return True
            for _ in range(_CHUNKS_PER_PASS):
                ended = run.ended_at is not None
                data, size = _read(run.path, run.offset)
                if size < 0:
                    return True  # the log is gone (the job's folder was removed)
                if not data and not ended:
                    return True
                last = ended and run.offset + len(data) >= size
                chunk = fedsec_pb2.JobLogChunk(job_id=run.job_id, run=run.run, offset=run.offset, data=data, last=last)
                try:
                    ack = self._upstream().AppendJobLog(chunk, timeout=30)
                except grpc.RpcError as exc:
                    return self._failed(run, exc)
                except ValueError:  # the site closed its channel: it is stopping
                    run.dropped = True
                    return True
                run.offset = ack.offset
                if ack.full or last:
                    run.dropped = True
                    return True
            return False

    def _failed(self, run: _Run, exc: grpc.RpcError) -> bool:
        """A failed send: True (drop the run) when it failed for good (refused, a server without AppendJobLog).

        False when it may succeed later (fedsec.transport.tls.transient).
        """
        err = error_from_rpc(exc, f"log of job {run.job_id}")
        if transient(exc):
            log.debug("job=%s log not sent yet: %s", run.job_id, err)
            return False
        log.info("job=%s the server takes no more of its log: %s", run.job_id, err)
        run.dropped = True
        return True


def _read(path: Path, offset: int) -> tuple[bytes, int]:
    """Up to limits.MAX_LOG_CHUNK_BYTES of the log at path from offset, and its size (-1: no such log)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return b"", -1
    try:
        size = os.fstat(fd).st_size
        if offset >= size:
            return b"", size
        return os.pread(fd, min(limits.MAX_LOG_CHUNK_BYTES, size - offset), offset), size
    finally:
        os.close(fd)
