"""The state interface of a server: the Protocols every backend implements, and nothing else.

StateStore holds the records (jobs, rounds, site reports, participation, results,
audit) and BlobStore the bytes (archives, checkpoints, results), streamed. The
server reaches its state only through these, so the backend (sqlite, postgres) is
a setting; one contract suite (tests/unit/state) runs against every backend.

Every method raises JobError (fedsec.errors) for a request the state refuses (no
such job, a transition a job cannot make, a value over its limit), and
StoreUnavailableError (a JobError) when the backend cannot be read or written,
which a caller may retry later. A method never returns a backend's own type.

Room for high availability (issue 13 part 2, not built yet): a Lease value
(holder, fencing token, deadline) and three methods, acquire_lease(holder, ttl)
-> Lease | None, renew_lease(lease) and release_lease(lease), kept in a lease row
(postgres: SELECT ... FOR UPDATE on it; the token a sequence that only grows).
Every write method then takes the caller's token and runs only while the row
still holds it, so a replica that lost its lease can never write. Nothing in
this interface assumes one process: each call is one transaction, and the job
transitions lock their row.
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
    NewJob,
    Participation,
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

    def set_running(self, job_id: str) -> JobRecord:
        """SUBMITTED -> RUNNING (sets start_time), or RUNNING again: a resume (resume_count + 1)."""
        ...

    def set_progress(self, job_id: str, current_round: int) -> None:
        """Record current_round rounds completed; it never goes back and never passes num_rounds."""
        ...

    def finish_job(self, job_id: str, status: JobStatus, reason: str) -> JobRecord:
        """Move a job to a final status; a job already finished keeps its first one and is returned."""
        ...

    def delete_job(self, job_id: str, before_commit: Callable[[], None] | None = None) -> None:
        """Remove a finished job and everything recorded about it; before_commit runs inside the transaction."""
        ...

    # what a job did
    def put_round(self, job_id: str, round_: RoundRecord) -> None:
        """Record a completed round (recording the same number again replaces it)."""
        ...

    def rounds(self, job_id: str) -> list[RoundRecord]:
        """The job's completed rounds, by number."""
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

    def put_result(self, job_id: str, result: ResultMeta) -> None:
        """Record what the job kept as its result (replacing an earlier record)."""
        ...

    def get_result(self, job_id: str) -> ResultMeta | None:
        """What the job kept as its result, or None before it ended."""
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
