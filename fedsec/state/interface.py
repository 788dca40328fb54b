"""The state interface of a server: the Protocols every backend implements, and nothing else.

StateStore holds the records (jobs, rounds, refused updates, site reports,
participation, results, audit) and BlobStore the bytes (archives, checkpoints, results), streamed. The
server reaches its state only through these, so the backend (sqlite, postgres) is
a setting; one contract suite (tests/unit/state) runs against every backend.

Every method raises JobError (fedsec.errors) for a request the state refuses (no
such job, a transition a job cannot make, a value over its limit), and
StoreUnavailableError (a JobError) when the backend cannot be read or written,
which a caller may retry later. A method never returns a backend's own type.

High availability (issue 13): the server lease, a Lease (holder, fencing token,
deadline) in one row of the state. acquire_lease takes it when it is free or
lapsed (the token grows by one at each acquisition and never goes back),
renew_lease extends it for its holder only, release_lease frees it. The writes
that change a job's state (set_running, set_progress, finish_job, put_round,
put_refusal, put_result) take the caller's lease as `fence` and run only while the row still
carries its holder and token (LeaseLostError otherwise), so a replica that lost
the lease can never change a job. Nothing in this interface assumes one process:
each call is one transaction, and the job transitions lock their row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fedsec.state.records import (
    AuditEntry,
    JobRecord,
    JobStatus,
    Lease,
    NewJob,
    Participation,
    Refusal,
    ResultMeta,
    RoundRecord,
    SiteReport,
)


class StateStore(Protocol):
    """A server's records. Safe to call from several threads; each method is one transaction."""

    @property
    def backend(self) -> str:
        """The backend's short name: "sqlite" or "postgres"."""
        ...

    def schema_version(self) -> int:
        """The schema version the store is at (after the migrations ran)."""
        ...

    # jobs
    def add_job(self, job: NewJob) -> JobRecord:
        """Record a new job, SUBMITTED now. JobError if its id is taken or a field is bad."""
        ...

    def get_job(self, job_id: str) -> JobRecord:
        """The record of job_id. JobError if the id is malformed or no such job exists."""
        ...

    def find_job(self, id_prefix: str) -> JobRecord:
        """The one job whose id starts with id_prefix (already checked and lower-cased by the caller).

        JobError if none or several match."""
        ...

    def list_jobs(self, name_prefix: str, id_prefix: str, limit: int) -> list[JobRecord]:
        """Jobs whose name and id start with the prefixes (literally, case-sensitively), newest first."""
        ...

    def unfinished_jobs(self) -> list[JobRecord]:
        """SUBMITTED and RUNNING jobs, oldest first."""
        ...

    def set_running(self, job_id: str, *, fence: Lease | None = None) -> JobRecord:
        """SUBMITTED -> RUNNING (sets start_time), or RUNNING again: a resume (resume_count + 1)."""
        ...

    def set_progress(self, job_id: str, current_round: int, *, fence: Lease | None = None) -> None:
        """Record current_round rounds completed; it never goes back and never passes num_rounds."""
        ...

    def finish_job(self, job_id: str, status: JobStatus, reason: str, *, fence: Lease | None = None) -> JobRecord:
        """Move a job to a final status; a job already finished keeps its first one and is returned."""
        ...

    def delete_job(self, job_id: str, before_commit: Callable[[], None] | None = None) -> None:
        """Remove a finished job and everything recorded about it; before_commit runs inside the transaction."""
        ...

    # what a job did
    def put_round(self, job_id: str, round_: RoundRecord, *, fence: Lease | None = None) -> None:
        """Record a completed round (recording the same number again replaces it)."""
        ...

    def rounds(self, job_id: str) -> list[RoundRecord]:
        """The job's completed rounds, by number."""
        ...

    def put_refusal(self, job_id: str, refusal: Refusal, *, fence: Lease | None = None) -> None:
        """Record a refused update. The store keeps at most limits.MAX_REFUSALS_PER_ROUND per round (later ones
        of that round are dropped) and the newest limits.MAX_REFUSALS_KEPT of the job."""
        ...

    def refusals(self, job_id: str) -> list[Refusal]:
        """The job's refused updates kept, in the order they were recorded."""
        ...

    def put_site_report(self, job_id: str, report: SiteReport) -> None:
        """Record a site's report of its script's end (replacing the site's earlier one)."""
        ...

    def site_reports(self, job_id: str) -> list[SiteReport]:
        """The job's site reports, by site name."""
        ...

    def get_participation(self, job_id: str) -> Participation:
        """Which sites took part in the job (empty before any fetched it)."""
        ...

    def put_participation(self, job_id: str, participation: Participation) -> None:
        """Replace the job's participation record."""
        ...

    def put_result(self, job_id: str, result: ResultMeta, *, fence: Lease | None = None) -> None:
        """Record what the job kept as its result (replacing an earlier record)."""
        ...

    def get_result(self, job_id: str) -> ResultMeta | None:
        """What the job kept as its result, or None before it ended."""
        ...

    # the server lease (fence: see the module docstring; LeaseLostError when it no longer holds)
    def lease_clock(self) -> float:
        """Now, in seconds since the epoch, on the clock that stamps the lease: one clock for every replica
        (PostgreSQL's own), so replicas whose clocks differ still agree when the lease lapses."""
        ...

    def get_lease(self) -> Lease | None:
        """The lease as the store holds it now (lapsed or not); None when nobody holds it (never, or released)."""
        ...

    def acquire_lease(self, holder: str, ttl: float) -> Lease | None:
        """Take the lease for ttl seconds with a new fencing token if it is free, lapsed or holder's; else None."""
        ...

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        """Extend lease to now + ttl, same token. LeaseLostError if it lapsed or another holder took it."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Free the lease if lease still holds it (its token stays, so the next acquisition gets a greater one)."""
        ...

    # audit
    def append_audit(self, entry: AuditEntry) -> None:
        """Append one admin command to the audit trail; nothing ever changes or removes an entry."""
        ...

    def audit_tail(self, count: int) -> list[AuditEntry]:
        """The last count entries, oldest first."""
        ...

    def close(self) -> None:
        """Release the backend; later calls raise StoreUnavailableError."""
        ...


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its size and its sha256."""

    size: int
    sha256: bytes


class BlobStore(Protocol):
    """Bytes by key ("jobs/<job id>/job.zip"): written and read as streams, never whole in memory."""

    def write(self, key: str, chunks: Iterable[bytes], limit: int) -> BlobInfo:
        """Store the chunks under key (replacing it atomically); JobError past limit bytes, the old blob kept."""
        ...

    def adopt(self, key: str, path: Path) -> None:
        """Move the finished file at path (on the store's file system) to key, replacing it atomically."""
        ...

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """The blob for reading. JobError if there is none."""
        ...

    def chunks(self, key: str, size: int) -> Iterator[bytes]:
        """The blob in pieces of at most size bytes. JobError if there is none."""
        ...

    def info(self, key: str) -> BlobInfo | None:
        """The blob's size and sha256 (read through once), or None if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob if it exists."""
        ...
