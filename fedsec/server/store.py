"""The server's job store: the job records (through the state interface) and a folder per job.

Layout under the root folder the caller gives (the server passes ``<server kit>/store``)::

    jobs.db                     the SQLite backend's file (WAL), when the kit's store is sqlite (the default)
    jobs/<job_id>/job.zip       the submitted archive (blob key jobs/<job_id>/job.zip)
    jobs/<job_id>/workspace/    the server job process's working folder: its blobs (checkpoints, the result model)

The records live in a fedsec.state StateStore (SQLite by default, PostgreSQL when the kit
says so); this module adds the job folders, where the server's job processes keep their models (their
state reaches the records only through the server parent, fedsec.workflow.link),
and keeps a job's folder and record consistent (a record goes before its folder, and a
folder never outlives its record). Records survive closing and reopening, which is how a
server restart keeps its jobs. Safe to use from several threads. It must never import grpc,
numpy or torch, and never use a path built from an unchecked job id; every method raises
JobError (StoreUnavailableError when the backend cannot be reached).
"""

from __future__ import annotations

import builtins
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from fedsec import limits
from fedsec.errors import JobError, LeaseLostError
from fedsec.state import _sql
from fedsec.state.blobs import FolderBlobs
from fedsec.state.interface import StateStore
from fedsec.state.records import JobRecord, JobStatus, Lease, NewJob, Refusal, ResultMeta, RoundRecord
from fedsec.state.sqlite import DB_FILE, open_sqlite

__all__ = ["DB_FILE", "JOBS_DIR", "JOB_ARCHIVE", "MIN_ID_PREFIX", "WORKSPACE_DIR", "JobRecord", "JobStatus", "JobStore"]

SCHEMA_VERSION = _sql.LATEST
JOBS_DIR = "jobs"
JOB_ARCHIVE = "job.zip"  # inside job_dir()
WORKSPACE_DIR = "workspace"  # inside job_dir()
_DELETING = ".deleting"  # suffix of a job folder on its way out; never a valid job id
MIN_ID_PREFIX = _sql.MIN_ID_PREFIX
check_job_id = _sql.check_job_id


def archive_key(job_id: str) -> str:
    """The blob key of a job's signed archive."""
    return f"{JOBS_DIR}/{check_job_id(job_id)}/{JOB_ARCHIVE}"


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is cut by the umask, and the folder may be older


class JobStore:
    """The job records and folders of one server; a context manager.

    Every method raises JobError when the records cannot be read or written,
    including after close().
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time, state: StateStore | None = None) -> None:
        """Open the store under root, creating its folders; the records are state (default: root/jobs.db).

        Raises JobError if a folder cannot be made, or jobs.db is not a database, is not a
        fedsec job store, or was written by a newer schema.
        """
        self.root = Path(root)
        self._jobs = self.root / JOBS_DIR
        self._lock = threading.Lock()  # a job's folder and its record change together
        try:
            _make_private_dir(self.root)
            _make_private_dir(self._jobs)
            for leftover in self._jobs.glob(f"*{_DELETING}"):
                shutil.rmtree(leftover)  # a delete() interrupted after its record went
        except OSError as exc:
            raise JobError(f"job store {self.root}: cannot prepare: {exc.strerror or exc}") from exc
        self.state: StateStore = state if state is not None else open_sqlite(self.root / DB_FILE, clock=clock)
        self.blobs = FolderBlobs(self.root)
        # the server lease of this replica (None: no lease, one server): the fence of every write that changes a job
        self.fence: Callable[[], Lease | None] | None = None

    def _fence(self) -> Lease | None:
        if self.fence is None:
            return None
        lease = self.fence()
        if lease is None:
            raise LeaseLostError(f"job store {self.root.name}: this replica does not hold the server lease")
        return lease

    def add(
        self,
        *,
        job_id: str | None = None,
        name: str,
        submitter: str,
        submitter_org: str,
        submitter_role: str,
        meta_json: str,
        num_rounds: int,
        archive_sha256: bytes = b"",
    ) -> JobRecord:
        """Record a new job, SUBMITTED now, under job_id (the id its submitter signed) or a fresh id.

        Raises JobError if job_id is not a job id or is already taken, a field is empty
        or over its limit, meta_json is not a JSON object, num_rounds is outside
        1..MAX_ROUNDS, or the records cannot be written.
        """
        job = NewJob(
            job_id=str(uuid.uuid4()) if job_id is None else job_id, name=name, submitter=submitter,
            submitter_org=submitter_org, submitter_role=submitter_role, meta_json=meta_json,
            num_rounds=num_rounds, archive_sha256=archive_sha256,
        )  # fmt: skip
        return self.state.add_job(job)

    def get(self, job_id: str) -> JobRecord:
        """The record of job_id. Raises JobError if the id is malformed or no such job exists."""
        return self.state.get_job(job_id)

    def find(self, id_prefix: str) -> JobRecord:
        """The one job whose id starts with id_prefix (at least 4 characters, any case).

        Raises JobError if the prefix is too short or malformed, or matches no job or several.
        """
        return self.state.find_job(id_prefix)

    def list(
        self, *, name_prefix: str = "", id_prefix: str = "", limit: int = limits.MAX_LIST_JOBS
    ) -> builtins.list[JobRecord]:
        """Jobs whose name and id start with the given prefixes (matched literally and
        case-sensitively), newest submit_time first, at most limit of them.

        Raises JobError if limit is outside 1..MAX_LIST_JOBS or a prefix is too long.
        """
        return self.state.list_jobs(name_prefix, id_prefix, limit)

    def unfinished(self) -> builtins.list[JobRecord]:
        """SUBMITTED and RUNNING jobs, oldest first: what to resume after a restart. Raises JobError."""
        return self.state.unfinished_jobs()

    def set_running(self, job_id: str) -> JobRecord:
        """Mark a job RUNNING: from SUBMITTED it sets start_time; from RUNNING it is a resume
        after a restart and counts one more in resume_count.

        Raises JobError if the id is malformed, no such job exists, or the job is finished.
        """
        return self.state.set_running(job_id, fence=self._fence())

    def set_progress(self, job_id: str, current_round: int) -> None:
        """Record that current_round rounds are completed.

        Raises JobError if the job is not RUNNING, or current_round is below the recorded
        one or above num_rounds.
        """
        self.state.set_progress(job_id, current_round, fence=self._fence())

    def finish(self, job_id: str, status: JobStatus, reason: str = "") -> JobRecord:
        """Move a job to a final status with a reason (cut to MAX_ERROR_TEXT characters).

        A job already finished keeps its first final status and is returned unchanged, so
        an abort racing a completion is safe. Raises JobError if status is not final, the
        job cannot reach it from where it is (SUBMITTED never completes), or no such job.
        """
        return self.state.finish_job(job_id, status, reason, fence=self._fence())

    def put_round(self, job_id: str, round_: RoundRecord) -> None:
        """Record a completed round (fenced like the job's transitions). Raises JobError."""
        self.state.put_round(job_id, round_, fence=self._fence())

    def put_refusal(self, job_id: str, refusal: Refusal) -> None:
        """Record a refused update (fenced like the job's transitions). Raises JobError."""
        self.state.put_refusal(job_id, refusal, fence=self._fence())

    def put_result(self, job_id: str, result: ResultMeta) -> None:
        """Record what the job kept as its result (fenced). Raises JobError."""
        self.state.put_result(job_id, result, fence=self._fence())

    def job_dir(self, job_id: str) -> Path:
        """The folder of an existing job (store/jobs/<job_id>), created with mode 0700.

        Raises JobError if the id is malformed, no such job exists, or the folder cannot be made.
        """
        with self._lock:
            self.state.get_job(job_id)  # under the lock, so a delete() cannot slip in before the mkdir
            path = self._jobs / job_id
            try:
                _make_private_dir(path)
            except OSError as exc:
                raise JobError(f"job {job_id}: cannot make its folder: {exc.strerror or exc}") from exc
        return path

    def job_path(self, job_id: str) -> Path:
        """Where a job's folder is (it may not exist): for reads on hot paths; no query."""
        return self._jobs / check_job_id(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a finished job's record and folder.

        Raises JobError if the id is malformed, no such job exists, the job is not finished,
        or its folder cannot be removed.
        """
        path = self._jobs / check_job_id(job_id)
        doomed = path.with_name(path.name + _DELETING)

        def move_aside() -> None:
            # Just before the commit: a failed commit puts it back, and a crash after it
            # leaves only a *.deleting folder that opening sweeps.
            if path.exists():
                path.rename(doomed)

        try:
            with self._lock:
                try:
                    self.state.delete_job(job_id, move_aside)
                except BaseException:
                    if doomed.exists() and not path.exists():
                        doomed.rename(path)
                    raise
            if doomed.exists():
                shutil.rmtree(doomed)
        except OSError as exc:
            raise JobError(f"job {job_id}: cannot remove its folder: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the records' backend; later calls raise JobError."""
        self.state.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
