"""The server's job store: an embedded SQLite database of job records and a folder per job.

Layout under the root folder the caller gives (the server passes ``<server kit>/store``)::

    jobs.db                     SQLite in WAL mode; the schema version is PRAGMA user_version
    jobs/<job_id>/job.zip       the submitted archive, written by the caller through job_dir()
    jobs/<job_id>/workspace/    the server job process's working folder (checkpoints, results)

The store owns job records and their state transitions; records survive closing and
reopening, which is how a server restart keeps its jobs. It is used from several threads
of one process: one connection, guarded by a lock, and a transaction for every write.
It must never import grpc, numpy or torch, never use a path built from an unchecked job
id, and never let a sqlite3 error escape: they become JobError here.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from fedsec import limits
from fedsec.errors import JobError

SCHEMA_VERSION = 1
DB_FILE = "jobs.db"
JOBS_DIR = "jobs"
JOB_ARCHIVE = "job.zip"  # inside job_dir()
WORKSPACE_DIR = "workspace"  # inside job_dir()
_DELETING = ".deleting"  # suffix of a job folder on its way out; never a valid job id

_JOB_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_ID_PREFIX_RE = re.compile(r"[0-9a-f-]{1,36}")
MIN_ID_PREFIX = 4

_SCHEMA = """
CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    submitter       TEXT NOT NULL,
    submitter_org   TEXT NOT NULL,
    submitter_role  TEXT NOT NULL,
    submit_time     REAL NOT NULL,
    start_time      REAL,
    end_time        REAL,
    reason          TEXT NOT NULL,
    meta_json       TEXT NOT NULL,
    num_rounds      INTEGER NOT NULL,
    current_round   INTEGER NOT NULL,
    resume_count    INTEGER NOT NULL
);
CREATE INDEX jobs_by_submit_time ON jobs (submit_time);
CREATE INDEX jobs_by_status ON jobs (status);
"""


class JobStatus(enum.Enum):
    """Where a job is in its life; the values are what the store and the wire carry."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "finished:completed"
    ABORTED = "finished:aborted"
    FAILED = "finished:failed"

    @property
    def finished(self) -> bool:
        """True for the three final states."""
        return self.value.startswith("finished:")


# The final states each unfinished state may go to (a job never completes without running).
_FINISH_FROM = {
    JobStatus.SUBMITTED: {JobStatus.ABORTED, JobStatus.FAILED},
    JobStatus.RUNNING: {JobStatus.COMPLETED, JobStatus.ABORTED, JobStatus.FAILED},
}


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """One job as the store holds it."""

    job_id: str
    name: str
    status: JobStatus
    submitter: str
    submitter_org: str
    submitter_role: str
    submit_time: float
    start_time: float | None
    end_time: float | None
    reason: str  # why it failed or was aborted; "" otherwise
    meta_json: str  # the job's meta as JSON text
    num_rounds: int
    current_round: int  # rounds completed so far
    resume_count: int  # how many times the job was resumed after a server restart


_COLUMNS = ", ".join(f.name for f in dataclasses.fields(JobRecord))


def check_job_id(job_id: str) -> str:
    """Return job_id if it is a uuid4 in its canonical text form; raise JobError otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise JobError(f"job {str(job_id)[:40]!r}: not a valid job id")
    return job_id


def _check_text(what: str, value: str, limit: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise JobError(f"job store: {what} must be a non-empty string, got {value!r:.40}")
    if len(value) > limit:
        raise JobError(f"job store: {what} {value[:20]!r}... is longer than {limit} characters")
    return value


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is cut by the umask, and the folder may be older


class JobStore:
    """The job records and folders of one server; a context manager.

    Every method raises JobError when the database cannot be read or written,
    including after close().
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open the store under root, creating its folders, database and schema if missing.

        Raises JobError if a folder cannot be made, or jobs.db is not a database, is not a
        fedsec job store, or was written by a newer schema.
        """
        self.root = Path(root)
        self._jobs = self.root / JOBS_DIR
        self._clock = clock
        self._lock = threading.Lock()
        db = self.root / DB_FILE
        try:
            _make_private_dir(self.root)
            _make_private_dir(self._jobs)
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))  # never readable by others
            for leftover in self._jobs.glob(f"*{_DELETING}"):
                shutil.rmtree(leftover)  # a delete() interrupted after its record went
        except OSError as exc:
            raise JobError(f"job store {self.root}: cannot prepare: {exc.strerror or exc}") from exc
        try:
            self._conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise JobError(f"job store {db}: cannot open: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._open_schema(db)
        except BaseException:
            self._conn.close()
            raise

    def _open_schema(self, db: Path) -> None:
        with self._db(f"cannot open {DB_FILE}"):
            self._conn.execute("PRAGMA journal_mode=WAL")  # the first read: fails here if not a database
        with self._write(f"cannot open {DB_FILE}") as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise JobError(f"job store {db}: not a fedsec job store (it holds other tables)")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise JobError(f"job store {db}: schema version {version}, this fedsec reads {SCHEMA_VERSION}")

    @contextmanager
    def _db(self, what: str) -> Iterator[None]:
        """Turn a sqlite3 error raised inside into a JobError saying what was being done."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JobError(f"job store {self.root}: {what}: {exc}") from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one IMMEDIATE transaction; commit on success, roll back otherwise."""
        with self._lock, self._db(what):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # also when COMMIT itself failed
                    self._conn.execute("ROLLBACK")
                raise

    def _select(self, where: str, params: tuple[object, ...], order: str = "", limit: int = -1) -> list[JobRecord]:
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE {where} {order} LIMIT ?"  # noqa: S608 - fixed fragments only
        return [_record(row) for row in self._conn.execute(sql, (*params, limit))]

    def _one(self, job_id: str) -> JobRecord:
        found = self._select("job_id = ?", (check_job_id(job_id),))
        if not found:
            raise JobError(f"job {job_id}: no such job")
        return found[0]

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
    ) -> JobRecord:
        """Record a new job, SUBMITTED now, under job_id (the id its submitter signed) or a fresh id.

        Raises JobError if job_id is not a job id or is already taken, a field is empty
        or over its limit, meta_json is not a JSON object, num_rounds is outside
        1..MAX_ROUNDS, or the database fails.
        """
        job_id = str(uuid.uuid4()) if job_id is None else check_job_id(job_id)
        _check_text("name", name, limits.MAX_JOB_NAME)
        _check_text("submitter", submitter, limits.MAX_NAME_LENGTH)
        _check_text("submitter_org", submitter_org, limits.MAX_NAME_LENGTH)
        _check_text("submitter_role", submitter_role, limits.MAX_NAME_LENGTH)
        if not isinstance(meta_json, str) or len(meta_json.encode()) > limits.MAX_META_JSON_BYTES:
            raise JobError(f"job {name}: meta_json must be text of at most {limits.MAX_META_JSON_BYTES} bytes")
        try:
            if not isinstance(json.loads(meta_json), dict):
                raise JobError(f"job {name}: meta_json must be a JSON object")
        except (ValueError, RecursionError) as exc:
            raise JobError(f"job {name}: meta_json is not valid JSON: {exc}") from exc
        if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or not 1 <= num_rounds <= limits.MAX_ROUNDS:
            raise JobError(f"job {name}: num_rounds must be an integer in 1..{limits.MAX_ROUNDS}, got {num_rounds!r}")
        record = JobRecord(
            job_id=job_id, name=name, status=JobStatus.SUBMITTED, submitter=submitter,
            submitter_org=submitter_org, submitter_role=submitter_role, submit_time=self._clock(),
            start_time=None, end_time=None, reason="", meta_json=meta_json, num_rounds=num_rounds,
            current_round=0, resume_count=0,
        )  # fmt: skip
        with self._write(f"cannot add job {name}") as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is not None:
                raise JobError(f"job {job_id}: a job with this id exists already; a signed job runs once")
            values = {**dataclasses.asdict(record), "status": record.status.value}
            conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES (:{_COLUMNS.replace(', ', ', :')})", values)  # noqa: S608
        return record

    def get(self, job_id: str) -> JobRecord:
        """The record of job_id. Raises JobError if the id is malformed or no such job exists."""
        with self._lock, self._db(f"cannot read job {job_id:.40}"):
            return self._one(job_id)

    def find(self, id_prefix: str) -> JobRecord:
        """The one job whose id starts with id_prefix (at least 4 characters, any case).

        Raises JobError if the prefix is too short or malformed, or matches no job or several.
        """
        prefix = id_prefix.lower() if isinstance(id_prefix, str) else ""
        if len(prefix) < MIN_ID_PREFIX or not _ID_PREFIX_RE.fullmatch(prefix):
            raise JobError(f"job {id_prefix!r:.40}: give at least {MIN_ID_PREFIX} characters of a job id")
        with self._lock, self._db(f"cannot find job {prefix}"):
            count = self._conn.execute(
                "SELECT count(*) FROM jobs WHERE substr(job_id, 1, ?) = ?", (len(prefix), prefix)
            )
            matches: int = count.fetchone()[0]
            if matches == 1:
                return self._select("substr(job_id, 1, ?) = ?", (len(prefix), prefix))[0]
        if matches == 0:
            raise JobError(f"job {prefix}: no such job")
        raise JobError(f"job {prefix}: ambiguous, {matches} jobs have ids starting with it")

    def list(
        self, *, name_prefix: str = "", id_prefix: str = "", limit: int = limits.MAX_LIST_JOBS
    ) -> builtins.list[JobRecord]:
        """Jobs whose name and id start with the given prefixes (matched literally and
        case-sensitively), newest submit_time first, at most limit of them.

        Raises JobError if limit is outside 1..MAX_LIST_JOBS or a prefix is too long.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= limits.MAX_LIST_JOBS:
            raise JobError(f"job store: list limit must be in 1..{limits.MAX_LIST_JOBS}, got {limit!r}")
        _check_text("name prefix", name_prefix, limits.MAX_JOB_NAME, empty_ok=True)
        _check_text("id prefix", id_prefix, 36, empty_ok=True)
        # substr() rather than LIKE: LIKE treats % and _ as wildcards and ignores case.
        where = "substr(name, 1, ?) = ? AND substr(job_id, 1, ?) = ?"
        params = (len(name_prefix), name_prefix, len(id_prefix), id_prefix.lower())
        with self._lock, self._db("cannot list jobs"):
            return self._select(where, params, "ORDER BY submit_time DESC, rowid DESC", limit)

    def unfinished(self) -> builtins.list[JobRecord]:
        """SUBMITTED and RUNNING jobs, oldest first: what to resume after a restart. Raises JobError."""
        params = (JobStatus.SUBMITTED.value, JobStatus.RUNNING.value)
        with self._lock, self._db("cannot list unfinished jobs"):
            return self._select("status IN (?, ?)", params, "ORDER BY submit_time ASC, rowid ASC")

    def set_running(self, job_id: str) -> JobRecord:
        """Mark a job RUNNING: from SUBMITTED it sets start_time; from RUNNING it is a resume
        after a restart and counts one more in resume_count.

        Raises JobError if the id is malformed, no such job exists, or the job is finished.
        """
        with self._write(f"cannot start job {job_id:.40}") as conn:
            old = self._one(job_id)
            if old.status is JobStatus.SUBMITTED:
                conn.execute(
                    "UPDATE jobs SET status = ?, start_time = ? WHERE job_id = ?",
                    (JobStatus.RUNNING.value, self._clock(), job_id),
                )
            elif old.status is JobStatus.RUNNING:
                conn.execute("UPDATE jobs SET resume_count = resume_count + 1 WHERE job_id = ?", (job_id,))
            else:
                raise JobError(f"job {job_id}: cannot go from {old.status.value} to {JobStatus.RUNNING.value}")
            return self._one(job_id)

    def set_progress(self, job_id: str, current_round: int) -> None:
        """Record that current_round rounds are completed.

        Raises JobError if the job is not RUNNING, or current_round is below the recorded
        one or above num_rounds.
        """
        with self._write(f"cannot record progress of job {job_id:.40}") as conn:
            old = self._one(job_id)
            if old.status is not JobStatus.RUNNING:
                raise JobError(f"job {job_id}: cannot record progress while {old.status.value}")
            if isinstance(current_round, bool) or not isinstance(current_round, int):
                raise JobError(f"job {job_id}: current_round must be an integer, got {current_round!r}")
            if not old.current_round <= current_round <= old.num_rounds:
                raise JobError(
                    f"job {job_id}: current_round {current_round} is outside "
                    f"{old.current_round}..{old.num_rounds} (it never goes back)"
                )
            conn.execute("UPDATE jobs SET current_round = ? WHERE job_id = ?", (current_round, job_id))

    def finish(self, job_id: str, status: JobStatus, reason: str = "") -> JobRecord:
        """Move a job to a final status with a reason (cut to MAX_ERROR_TEXT characters).

        A job already finished keeps its first final status and is returned unchanged, so
        an abort racing a completion is safe. Raises JobError if status is not final, the
        job cannot reach it from where it is (SUBMITTED never completes), or no such job.
        """
        if not isinstance(status, JobStatus) or not status.finished:
            raise JobError(f"job {job_id:.40}: cannot finish with status {status!r}, it is not a final one")
        if not isinstance(reason, str):
            raise JobError(f"job {job_id:.40}: reason must be text, got {type(reason).__name__}")
        with self._write(f"cannot finish job {job_id:.40}") as conn:
            old = self._one(job_id)
            if old.status.finished:
                return old
            if status not in _FINISH_FROM[old.status]:
                raise JobError(f"job {job_id}: cannot go from {old.status.value} to {status.value}")
            conn.execute(
                "UPDATE jobs SET status = ?, end_time = ?, reason = ? WHERE job_id = ?",
                (status.value, self._clock(), reason[: limits.MAX_ERROR_TEXT], job_id),
            )
            return self._one(job_id)

    def job_dir(self, job_id: str) -> Path:
        """The folder of an existing job (store/jobs/<job_id>), created with mode 0700.

        Raises JobError if the id is malformed, no such job exists, or the folder cannot be made.
        """
        with self._lock, self._db(f"cannot read job {job_id:.40}"):
            self._one(job_id)  # under the lock, so a delete() cannot slip in before the mkdir
            path = self._jobs / job_id
            try:
                _make_private_dir(path)
            except OSError as exc:
                raise JobError(f"job {job_id}: cannot make its folder: {exc.strerror or exc}") from exc
        return path

    def job_path(self, job_id: str) -> Path:
        """Where a job's folder is (it may not exist): for reads on hot paths; no database query."""
        return self._jobs / check_job_id(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a finished job's record and folder.

        Raises JobError if the id is malformed, no such job exists, the job is not finished,
        or its folder cannot be removed.
        """
        path = self._jobs / check_job_id(job_id)
        doomed = path.with_name(path.name + _DELETING)
        try:
            try:
                with self._write(f"cannot delete job {job_id}") as conn:
                    old = self._one(job_id)
                    if not old.status.finished:
                        raise JobError(f"job {job_id}: cannot delete it while {old.status.value}; abort it first")
                    conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
                    # Move the folder aside just before the commit: a failed commit puts it back,
                    # and a crash after it leaves only a *.deleting folder that opening sweeps.
                    if path.exists():
                        path.rename(doomed)
            except BaseException:
                if doomed.exists() and not path.exists():
                    doomed.rename(path)
                raise
            if doomed.exists():
                shutil.rmtree(doomed)
        except OSError as exc:
            raise JobError(f"job {job_id}: cannot remove its folder: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the database connection; later calls raise JobError."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _record(row: sqlite3.Row) -> JobRecord:
    fields = dict(row)
    try:
        fields["status"] = JobStatus(fields["status"])
    except ValueError:
        raise JobError(f"job {row['job_id']}: unknown status {row['status']!r} in the store") from None
    return JobRecord(**fields)
