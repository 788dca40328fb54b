"""The state interface over SQL, shared by the sqlite and postgres backends, and their versioned schema.

A backend gives a Database: transactions whose cursor runs SQL written here with
``?`` placeholders (postgres turns them into ``%s``), and the small differences of
its dialect (column types, the insertion order key). Everything else (the rules of
a job's life, the bounds on what is stored, the mapping of rows to records, the
migrations) lives here once, so both backends behave the same; the contract suite
checks it. Lists and maps inside a row (a round's sites, a command's arguments) are
kept as JSON text in their column: that never leaves this module.

Schema versions: each migration is one step of SQL run in one transaction, with its
number written to the schema_version table in the same transaction. Version 1 is
the jobs table of the first fedsec store (PRAGMA user_version = 1, no
schema_version table); opening such a store runs the steps after it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any, Protocol

from fedsec import limits
from fedsec.errors import JobError, LeaseLostError
from fedsec.state.records import (
    FINISH_FROM,
    AuditEntry,
    JobRecord,
    JobStatus,
    Lease,
    NewJob,
    Participation,
    Refusal,
    ResultMeta,
    ResultOutcome,
    RoundKind,
    RoundRecord,
    SiteOutcome,
    SiteReport,
)

_JOB_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_ID_PREFIX_RE = re.compile(r"[0-9a-f-]{1,36}")
MIN_ID_PREFIX = 4
MAX_METRICS = 256  # metrics in one round
MAX_AUDIT_TAIL = 10_000
MAX_LEASE_TTL = 3600.0  # seconds


def params(values: Sequence[object]) -> tuple[object, ...]:
    """values as a backend binds them: NUL in text becomes U+FFFD (PostgreSQL's text cannot hold it, and
    sites and job code choose errors, logs and reasons), so both backends store the same text and a
    hostile NUL is never a failed write."""
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in values)


class Cursor(Protocol):
    """One transaction of a backend."""

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run sql (``?`` placeholders) and return its rows."""
        ...

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run sql (``?`` placeholders) for its effect."""
        ...


class Database(Protocol):
    """What a backend gives the shared code."""

    name: str  # "sqlite" | "postgres"
    order_key: str  # the column that orders rows by insertion: sqlite's rowid, postgres' seq
    schema_lock: str  # SQL that serialises schema changes between processes ("": the write lock does)

    def write(self, what: str) -> AbstractContextManager[Cursor]:
        """One serialised read-write transaction; errors become StoreUnavailableError naming what."""
        ...

    def read(self, what: str) -> AbstractContextManager[Cursor]:
        """One read transaction; errors become StoreUnavailableError naming what."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ schema


@dataclass(frozen=True)
class Types:
    """Column types of a dialect, substituted into the migrations' SQL."""

    real: str
    blob: str
    empty_blob: str
    serial_pk: str  # an auto-numbered primary key column's type and constraint
    seq_column: str  # the jobs table's insertion order column ("" where the backend has one built in)


SQLITE_TYPES = Types("REAL", "BLOB", "X''", "INTEGER PRIMARY KEY AUTOINCREMENT", "")
POSTGRES_TYPES = Types(
    "DOUBLE PRECISION", "BYTEA", "''::bytea", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    ",\n    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE",
)  # fmt: skip


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str  # statements separated by ";", with {real} {blob} {empty_blob} {serial_pk} {seq_column}

    def statements(self, types: Types) -> list[str]:
        values = {f.name: getattr(types, f.name) for f in fields(types)}
        return [s.strip().format(**values) for s in self.sql.split(";") if s.strip()]


MIGRATIONS = (
    Migration(
        1,
        "job records (the first fedsec store)",
        """
CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    submitter       TEXT NOT NULL,
    submitter_org   TEXT NOT NULL,
    submitter_role  TEXT NOT NULL,
    submit_time     {real} NOT NULL,
    start_time      {real},
    end_time        {real},
    reason          TEXT NOT NULL,
    meta_json       TEXT NOT NULL,
    num_rounds      INTEGER NOT NULL,
    current_round   INTEGER NOT NULL,
    resume_count    INTEGER NOT NULL{seq_column}
);
CREATE INDEX jobs_by_submit_time ON jobs (submit_time);
CREATE INDEX jobs_by_status ON jobs (status)
""",
    ),
    Migration(
        2,
        "archive digest, rounds, site reports, participation, results, audit trail",
        """
ALTER TABLE jobs ADD COLUMN archive_sha256 {blob} NOT NULL DEFAULT {empty_blob};
CREATE TABLE rounds (
    job_id      TEXT NOT NULL,
    number      INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    sampled     TEXT NOT NULL,
    accepted    TEXT NOT NULL,
    refused     TEXT NOT NULL,
    failed      TEXT NOT NULL,
    metrics     TEXT NOT NULL,
    time        {real} NOT NULL,
    PRIMARY KEY (job_id, number)
);
CREATE TABLE site_reports (
    job_id      TEXT NOT NULL,
    site        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT NOT NULL,
    log_tail    TEXT NOT NULL,
    time        {real} NOT NULL,
    PRIMARY KEY (job_id, site)
);
CREATE TABLE participation (
    job_id      TEXT PRIMARY KEY NOT NULL,
    fetched     TEXT NOT NULL,
    failures    TEXT NOT NULL,
    sites_left  TEXT NOT NULL
);
CREATE TABLE results (
    job_id       TEXT PRIMARY KEY NOT NULL,
    outcome      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    model_key    TEXT NOT NULL,
    model_round  INTEGER,
    model_sha256 {blob} NOT NULL,
    model_size   BIGINT NOT NULL
);
CREATE TABLE audit (
    seq         {serial_pk},
    time        {real} NOT NULL,
    admin       TEXT NOT NULL,
    org         TEXT NOT NULL,
    role        TEXT NOT NULL,
    command     TEXT NOT NULL,
    args        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL
)
""",
    ),
    Migration(
        3,
        "the server lease (which replica is active) and its fencing token",
        """
CREATE TABLE lease (
    name           TEXT PRIMARY KEY NOT NULL,
    holder         TEXT NOT NULL,
    fencing_token  BIGINT NOT NULL,
    deadline       {real} NOT NULL,
    acquired       {real} NOT NULL
);
INSERT INTO lease (name, holder, fencing_token, deadline, acquired) VALUES ('server', '', 0, 0, 0)
""",
    ),
    Migration(
        4,
        "refused updates (what the workflow process reports over the wire instead of its progress.json)",
        """
CREATE TABLE refusals (
    seq         {serial_pk},
    job_id      TEXT NOT NULL,
    round       INTEGER NOT NULL,
    site        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    time        {real} NOT NULL
);
CREATE INDEX refusals_by_job ON refusals (job_id, round)
""",
    ),
)
LATEST = MIGRATIONS[-1].version
SCHEMA_VERSION_TABLE = "CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL, description TEXT NOT NULL)"


def migrate(db: Database, types: Types, current: int, where: str) -> int:
    """Run the migrations after version current, each in its own transaction; return the version reached.

    Raises JobError when current is newer than this fedsec knows."""
    if current > LATEST:
        raise JobError(f"{where}: schema version {current}, this fedsec reads versions up to {LATEST}")
    for step in MIGRATIONS[current:]:
        with db.write(f"cannot upgrade the schema to version {step.version}") as cur:
            if db.schema_lock:
                cur.rows(db.schema_lock)
            done = cur.rows("SELECT max(version) FROM schema_version")[0][0] or 0
            if done >= step.version:  # another process ran it meanwhile
                continue
            for statement in step.statements(types):
                cur.run(statement)
            cur.run("INSERT INTO schema_version (version, description) VALUES (?, ?)", (step.version, step.description))
    return LATEST


# ------------------------------------------------------------------ checks


def check_job_id(job_id: str) -> str:
    """Return job_id if it is a uuid4 in its canonical text form; raise JobError otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise JobError(f"job {str(job_id)[:40]!r}: not a valid job id")
    return job_id


def check_id_prefix(id_prefix: str) -> str:
    """id_prefix lower-cased if it can start a job id and has at least MIN_ID_PREFIX characters; JobError otherwise."""
    prefix = id_prefix.lower() if isinstance(id_prefix, str) else ""
    if len(prefix) < MIN_ID_PREFIX or not _ID_PREFIX_RE.fullmatch(prefix):
        raise JobError(f"job {id_prefix!r:.40}: give at least {MIN_ID_PREFIX} characters of a job id")
    return prefix


def check_text(what: str, value: str, limit: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise JobError(f"job store: {what} must be a non-empty string, got {value!r:.40}")
    if len(value) > limit:
        raise JobError(f"job store: {what} {value[:20]!r}... is longer than {limit} characters")
    return value


def _check_int(what: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobError(f"job store: {what} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_sites(what: str, sites: frozenset[str] | Mapping[str, object]) -> list[str]:
    if len(sites) > limits.MAX_PARTICIPANTS:
        raise JobError(f"job store: {what}: more than {limits.MAX_PARTICIPANTS} sites")
    return sorted(check_text(f"{what} site", s, limits.MAX_NAME_LENGTH) for s in sites)


def check_new_job(job: NewJob) -> NewJob:
    check_job_id(job.job_id)
    check_text("name", job.name, limits.MAX_JOB_NAME)
    check_text("submitter", job.submitter, limits.MAX_NAME_LENGTH)
    check_text("submitter_org", job.submitter_org, limits.MAX_NAME_LENGTH)
    check_text("submitter_role", job.submitter_role, limits.MAX_NAME_LENGTH)
    if not isinstance(job.meta_json, str) or len(job.meta_json.encode()) > limits.MAX_META_JSON_BYTES:
        raise JobError(f"job {job.name}: meta_json must be text of at most {limits.MAX_META_JSON_BYTES} bytes")
    try:
        if not isinstance(json.loads(job.meta_json), dict):
            raise JobError(f"job {job.name}: meta_json must be a JSON object")
    except (ValueError, RecursionError) as exc:
        raise JobError(f"job {job.name}: meta_json is not valid JSON: {exc}") from exc
    if isinstance(job.num_rounds, bool) or not isinstance(job.num_rounds, int):
        raise JobError(
            f"job {job.name}: num_rounds must be an integer in 1..{limits.MAX_ROUNDS}, got {job.num_rounds!r}"
        )
    if not 1 <= job.num_rounds <= limits.MAX_ROUNDS:
        raise JobError(
            f"job {job.name}: num_rounds must be an integer in 1..{limits.MAX_ROUNDS}, got {job.num_rounds!r}"
        )
    if not isinstance(job.archive_sha256, bytes) or len(job.archive_sha256) not in (0, 32):
        raise JobError(f"job {job.name}: archive_sha256 must be 32 bytes (a sha256 digest)")
    return job


def new_job_id() -> str:
    return str(uuid.uuid4())


# ------------------------------------------------------------------ the shared implementation

JOB_COLUMNS = (
    "job_id, name, status, submitter, submitter_org, submitter_role, submit_time, start_time, end_time, "
    "reason, meta_json, num_rounds, current_round, resume_count, archive_sha256"
)


def _job(row: tuple[Any, ...]) -> JobRecord:
    values = list(row)
    try:
        values[2] = JobStatus(values[2])
    except ValueError:
        raise JobError(f"job {values[0]}: unknown status {values[2]!r} in the store") from None
    values[14] = bytes(values[14])
    return JobRecord(*values)


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True)


class SqlState:
    """StateStore over a Database (see the module docstring). clock gives the times it records.

    lease_clock stamps and judges the server lease; None: the database's own clock (now_sql), the one
    clock every replica on it shares.
    """

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float],
        where: str,
        *,
        lease_clock: Callable[[], float] | None = None,
        now_sql: str = "",
    ) -> None:
        if lease_clock is None and not now_sql:
            raise ValueError("SqlState: a lease clock or the database's now_sql is needed")
        self._db = db
        self._clock = clock
        self._where = where
        self._lease_clock = lease_clock
        self._now_sql = now_sql

    @property
    def backend(self) -> str:
        return self._db.name

    def schema_version(self) -> int:
        with self._db.read("cannot read the schema version") as cur:
            return int(cur.rows("SELECT max(version) FROM schema_version")[0][0] or 0)

    # ------------------------------------------------------------ jobs

    def _select(
        self, cur: Cursor, where: str, params: Sequence[object], order: str = "", limit: int | None = None
    ) -> list[JobRecord]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} {order}"  # noqa: S608 - fixed fragments only
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_job(row) for row in cur.rows(sql, params)]

    def _one(self, cur: Cursor, job_id: str, *, for_update: bool = False) -> JobRecord:
        lock = " FOR UPDATE" if for_update and self._db.name == "postgres" else ""
        found = self._select(cur, "job_id = ?" + lock, (check_job_id(job_id),))
        if not found:
            raise JobError(f"job {job_id}: no such job")
        return found[0]

    def add_job(self, job: NewJob) -> JobRecord:
        check_new_job(job)
        record = JobRecord(
            job_id=job.job_id, name=job.name, status=JobStatus.SUBMITTED, submitter=job.submitter,
            submitter_org=job.submitter_org, submitter_role=job.submitter_role, submit_time=self._clock(),
            start_time=None, end_time=None, reason="", meta_json=job.meta_json, num_rounds=job.num_rounds,
            current_round=0, resume_count=0, archive_sha256=job.archive_sha256,
        )  # fmt: skip
        with self._db.write(f"cannot add job {job.name}") as cur:
            if cur.rows("SELECT 1 FROM jobs WHERE job_id = ?", (job.job_id,)):
                raise JobError(f"job {job.job_id}: a job with this id exists already; a signed job runs once")
            values = [getattr(record, f.name) for f in fields(record)]
            values[2] = record.status.value
            marks = ", ".join("?" * len(values))
            cur.run(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks})", values)  # noqa: S608
        return record

    def get_job(self, job_id: str) -> JobRecord:
        with self._db.read(f"cannot read job {job_id:.40}") as cur:
            return self._one(cur, job_id)

    def find_job(self, id_prefix: str) -> JobRecord:
        prefix = check_id_prefix(id_prefix)
        where = "substr(job_id, 1, CAST(? AS INTEGER)) = ?"
        with self._db.read(f"cannot find job {prefix}") as cur:
            found = self._select(cur, where, (len(prefix), prefix), limit=3)
            matches = len(found)
            if matches > 2:
                matches = int(cur.rows(f"SELECT count(*) FROM jobs WHERE {where}", (len(prefix), prefix))[0][0])  # noqa: S608
        if matches == 1:
            return found[0]
        if matches == 0:
            raise JobError(f"job {prefix}: no such job")
        raise JobError(f"job {prefix}: ambiguous, {matches} jobs have ids starting with it")

    def list_jobs(self, name_prefix: str, id_prefix: str, limit: int) -> list[JobRecord]:
        _check_int("list limit", limit, 1, limits.MAX_LIST_JOBS)
        check_text("name prefix", name_prefix, limits.MAX_JOB_NAME, empty_ok=True)
        check_text("id prefix", id_prefix, 36, empty_ok=True)
        # substr() rather than LIKE: LIKE treats % and _ as wildcards (and ignores case in SQLite).
        where = "substr(name, 1, CAST(? AS INTEGER)) = ? AND substr(job_id, 1, CAST(? AS INTEGER)) = ?"
        params = (len(name_prefix), name_prefix, len(id_prefix), id_prefix.lower())
        order = f"ORDER BY submit_time DESC, {self._db.order_key} DESC"
        with self._db.read("cannot list jobs") as cur:
            return self._select(cur, where, params, order, limit)

    def unfinished_jobs(self) -> list[JobRecord]:
        params = (JobStatus.SUBMITTED.value, JobStatus.RUNNING.value)
        order = f"ORDER BY submit_time ASC, {self._db.order_key} ASC"
        with self._db.read("cannot list unfinished jobs") as cur:
            return self._select(cur, "status IN (?, ?)", params, order)

    def set_running(self, job_id: str, *, fence: Lease | None = None) -> JobRecord:
        with self._db.write(f"cannot start job {job_id:.40}") as cur:
            self._fenced(cur, fence, f"start job {job_id:.40}")
            old = self._one(cur, job_id, for_update=True)
            if old.status is JobStatus.SUBMITTED:
                cur.run(
                    "UPDATE jobs SET status = ?, start_time = ? WHERE job_id = ?",
                    (JobStatus.RUNNING.value, self._clock(), job_id),
                )
            elif old.status is JobStatus.RUNNING:
                cur.run("UPDATE jobs SET resume_count = resume_count + 1 WHERE job_id = ?", (job_id,))
            else:
                raise JobError(f"job {job_id}: cannot go from {old.status.value} to {JobStatus.RUNNING.value}")
            return self._one(cur, job_id)

    def set_progress(self, job_id: str, current_round: int, *, fence: Lease | None = None) -> None:
        with self._db.write(f"cannot record progress of job {job_id:.40}") as cur:
            self._fenced(cur, fence, f"record progress of job {job_id:.40}")
            old = self._one(cur, job_id, for_update=True)
            if old.status is not JobStatus.RUNNING:
                raise JobError(f"job {job_id}: cannot record progress while {old.status.value}")
            if isinstance(current_round, bool) or not isinstance(current_round, int):
                raise JobError(f"job {job_id}: current_round must be an integer, got {current_round!r}")
            if not old.current_round <= current_round <= old.num_rounds:
                raise JobError(
                    f"job {job_id}: current_round {current_round} is outside "
                    f"{old.current_round}..{old.num_rounds} (it never goes back)"
                )
            cur.run("UPDATE jobs SET current_round = ? WHERE job_id = ?", (current_round, job_id))

    def finish_job(self, job_id: str, status: JobStatus, reason: str, *, fence: Lease | None = None) -> JobRecord:
        if not isinstance(status, JobStatus) or not status.finished:
            raise JobError(f"job {job_id:.40}: cannot finish with status {status!r}, it is not a final one")
        if not isinstance(reason, str):
            raise JobError(f"job {job_id:.40}: reason must be text, got {type(reason).__name__}")
        with self._db.write(f"cannot finish job {job_id:.40}") as cur:
            self._fenced(cur, fence, f"finish job {job_id:.40}")
            old = self._one(cur, job_id, for_update=True)
            if old.status.finished:
                return old
            if status not in FINISH_FROM[old.status]:
                raise JobError(f"job {job_id}: cannot go from {old.status.value} to {status.value}")
            cur.run(
                "UPDATE jobs SET status = ?, end_time = ?, reason = ? WHERE job_id = ?",
                (status.value, self._clock(), reason[: limits.MAX_ERROR_TEXT], job_id),
            )
            return self._one(cur, job_id)

    def delete_job(self, job_id: str, before_commit: Callable[[], None] | None = None) -> None:
        with self._db.write(f"cannot delete job {job_id:.40}") as cur:
            old = self._one(cur, job_id, for_update=True)
            if not old.status.finished:
                raise JobError(f"job {job_id}: cannot delete it while {old.status.value}; abort it first")
            for table in ("rounds", "refusals", "site_reports", "participation", "results", "jobs"):
                cur.run(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))  # noqa: S608 - fixed names
            if before_commit is not None:
                before_commit()

    # ------------------------------------------------------------ what a job did

    def _exists(self, cur: Cursor, job_id: str) -> None:
        if not cur.rows("SELECT 1 FROM jobs WHERE job_id = ?", (check_job_id(job_id),)):
            raise JobError(f"job {job_id}: no such job")

    def put_round(self, job_id: str, round_: RoundRecord, *, fence: Lease | None = None) -> None:
        _check_int("round number", round_.number, 0, limits.MAX_ROUNDS)
        if not isinstance(round_.kind, RoundKind):
            raise JobError(f"job store: round kind must be a RoundKind, got {round_.kind!r}")
        refused = {s: str(r)[: limits.MAX_ERROR_TEXT] for s, r in round_.refused.items()}
        _check_sites("refused", refused)
        if len(round_.metrics) > MAX_METRICS:
            raise JobError(f"job store: round {round_.number}: more than {MAX_METRICS} metrics")
        metrics = {check_text("metric", k, limits.MAX_NAME_LENGTH * 4): float(v) for k, v in round_.metrics.items()}
        row = (
            job_id, round_.number, round_.kind.value, _dump(_check_sites("sampled", round_.sampled)),
            _dump(_check_sites("accepted", round_.accepted)), _dump(refused),
            _dump(_check_sites("failed", round_.failed)), _dump(metrics), self._clock(),
        )  # fmt: skip
        with self._db.write(f"cannot record round {round_.number} of job {job_id:.40}") as cur:
            self._fenced(cur, fence, f"record round {round_.number} of job {job_id:.40}")
            self._exists(cur, job_id)
            cur.run("DELETE FROM rounds WHERE job_id = ? AND number = ?", (job_id, round_.number))
            cur.run(
                "INSERT INTO rounds (job_id, number, kind, sampled, accepted, refused, failed, metrics, time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def rounds(self, job_id: str) -> list[RoundRecord]:
        sql = "SELECT number, kind, sampled, accepted, refused, failed, metrics, time FROM rounds"
        with self._db.read(f"cannot read the rounds of job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            rows = cur.rows(sql + " WHERE job_id = ? ORDER BY number", (job_id,))
        return [
            RoundRecord(
                number=int(n),
                kind=RoundKind(kind),
                sampled=frozenset(json.loads(sampled)),
                accepted=frozenset(json.loads(accepted)),
                refused=json.loads(refused),
                failed=frozenset(json.loads(failed)),
                metrics=json.loads(metrics),
                time=float(at),
            )
            for n, kind, sampled, accepted, refused, failed, metrics, at in rows
        ]

    def put_refusal(self, job_id: str, refusal: Refusal, *, fence: Lease | None = None) -> None:
        _check_int("refusal round", refusal.round, 0, limits.MAX_ROUNDS)
        check_text("refusal site", refusal.site, limits.MAX_NAME_LENGTH)
        if not isinstance(refusal.reason, str):
            raise JobError(f"job store: a refusal's reason must be text, got {type(refusal.reason).__name__}")
        reason = refusal.reason[: limits.MAX_REFUSAL_TEXT]
        with self._db.write(f"cannot record a refusal in round {refusal.round} of job {job_id:.40}") as cur:
            self._fenced(cur, fence, f"record a refusal in round {refusal.round} of job {job_id:.40}")
            self._exists(cur, job_id)
            counted = cur.rows("SELECT count(*) FROM refusals WHERE job_id = ? AND round = ?", (job_id, refusal.round))
            if int(counted[0][0]) >= limits.MAX_REFUSALS_PER_ROUND:
                return
            cur.run(
                "INSERT INTO refusals (job_id, round, site, reason, time) VALUES (?, ?, ?, ?, ?)",
                (job_id, refusal.round, refusal.site, reason, self._clock()),
            )
            kept = cur.rows(
                "SELECT seq FROM refusals WHERE job_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                (job_id, limits.MAX_REFUSALS_KEPT),
            )
            if kept:  # the newest MAX_REFUSALS_KEPT stay
                cur.run("DELETE FROM refusals WHERE job_id = ? AND seq <= ?", (job_id, kept[0][0]))

    def refusals(self, job_id: str) -> list[Refusal]:
        with self._db.read(f"cannot read the refusals of job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            rows = cur.rows("SELECT round, site, reason, time FROM refusals WHERE job_id = ? ORDER BY seq", (job_id,))
        return [Refusal(int(n), str(site), str(reason), float(at)) for n, site, reason, at in rows]

    def put_site_report(self, job_id: str, report: SiteReport) -> None:
        check_text("site", report.site, limits.MAX_NAME_LENGTH)
        if not isinstance(report.outcome, SiteOutcome):
            raise JobError(f"job store: a site report's outcome must be a SiteOutcome, got {report.outcome!r}")
        row = (
            job_id, report.site, report.outcome.value, report.error[-limits.MAX_ERROR_TEXT :],
            report.log_tail[-limits.MAX_LOG_TEXT :], self._clock(),
        )  # fmt: skip
        with self._db.write(f"cannot record the report of {report.site} on job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            cur.run("DELETE FROM site_reports WHERE job_id = ? AND site = ?", (job_id, report.site))
            cur.run(
                "INSERT INTO site_reports (job_id, site, outcome, error, log_tail, time) VALUES (?, ?, ?, ?, ?, ?)", row
            )

    def site_reports(self, job_id: str) -> list[SiteReport]:
        with self._db.read(f"cannot read the site reports of job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            rows = cur.rows(
                "SELECT site, outcome, error, log_tail, time FROM site_reports WHERE job_id = ? ORDER BY site",
                (job_id,),
            )
        return [SiteReport(s, SiteOutcome(o), e, lt, float(t)) for s, o, e, lt, t in rows]

    def get_participation(self, job_id: str) -> Participation:
        with self._db.read(f"cannot read the participation of job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            rows = cur.rows("SELECT fetched, failures, sites_left FROM participation WHERE job_id = ?", (job_id,))
        if not rows:
            return Participation()
        fetched, failures, left = rows[0]
        return Participation(frozenset(json.loads(fetched)), json.loads(failures), dict(json.loads(left)))

    def put_participation(self, job_id: str, participation: Participation) -> None:
        fetched = _check_sites("fetched", participation.fetched)
        failures = {s: _check_int("failures", n, 0, limits.MAX_ROUNDS * 10) for s, n in participation.failures.items()}
        _check_sites("failures", failures)
        _check_sites("left", participation.left)
        left = [[s, str(r)[-limits.MAX_ERROR_TEXT :]] for s, r in participation.left.items()]  # in the order they left
        with self._db.write(f"cannot record the participation of job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            cur.run("DELETE FROM participation WHERE job_id = ?", (job_id,))
            cur.run(
                "INSERT INTO participation (job_id, fetched, failures, sites_left) VALUES (?, ?, ?, ?)",
                (job_id, _dump(fetched), _dump(failures), json.dumps(left)),
            )

    def put_result(self, job_id: str, result: ResultMeta, *, fence: Lease | None = None) -> None:
        if not isinstance(result.outcome, ResultOutcome):
            raise JobError(f"job store: a result's outcome must be a ResultOutcome, got {result.outcome!r}")
        check_text("model key", result.model_key, 1024, empty_ok=True)
        if result.model_round is not None:
            _check_int("model round", result.model_round, 0, limits.MAX_ROUNDS)
        row = (
            job_id, result.outcome.value, result.reason[: limits.MAX_ERROR_TEXT], result.model_key,
            result.model_round, bytes(result.model_sha256), int(result.model_size),
        )  # fmt: skip
        with self._db.write(f"cannot record the result of job {job_id:.40}") as cur:
            self._fenced(cur, fence, f"record the result of job {job_id:.40}")
            self._exists(cur, job_id)
            cur.run("DELETE FROM results WHERE job_id = ?", (job_id,))
            cur.run(
                "INSERT INTO results (job_id, outcome, reason, model_key, model_round, model_sha256, model_size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def get_result(self, job_id: str) -> ResultMeta | None:
        sql = "SELECT outcome, reason, model_key, model_round, model_sha256, model_size FROM results WHERE job_id = ?"
        with self._db.read(f"cannot read the result of job {job_id:.40}") as cur:
            self._exists(cur, job_id)
            rows = cur.rows(sql, (job_id,))
        if not rows:
            return None
        outcome, reason, key, rnd, digest, size = rows[0]
        return ResultMeta(ResultOutcome(outcome), reason, key, rnd, bytes(digest), int(size))

    # ------------------------------------------------------------ the server lease

    def _lease_row(self, cur: Cursor, lock: str) -> tuple[str, int, float, float]:
        suffix = f" {lock}" if self._db.name == "postgres" else ""  # sqlite: the write transaction is the lock
        sql = "SELECT holder, fencing_token, deadline, acquired FROM lease WHERE name = 'server'" + suffix  # noqa: S608 - fixed fragments only
        rows = cur.rows(sql)
        if not rows:
            raise JobError(f"{self._where}: the lease row is missing (the schema was changed by hand?)")
        holder, token, deadline, acquired = rows[0]
        return str(holder), int(token), float(deadline), float(acquired)

    def _fenced(self, cur: Cursor, fence: Lease | None, what: str) -> None:
        """Refuse the write (LeaseLostError) unless the lease still carries fence's holder and token."""
        if fence is None:
            return
        holder, token, _, _ = self._lease_row(cur, "FOR SHARE")  # an acquisition waits for this write, and back
        if token != fence.fencing_token or holder != fence.holder:
            raise LeaseLostError(
                f"{self._where}: cannot {what}: replica {fence.holder} lost the server lease "
                f"(fencing token {fence.fencing_token}, now {token} held by {holder or 'nobody'})"
            )

    @staticmethod
    def _check_lease_args(holder: str, ttl: float) -> None:
        check_text("lease holder", holder, limits.MAX_NAME_LENGTH * 4)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_LEASE_TTL:
            raise JobError(f"job store: lease ttl must be a number of seconds in (0, {MAX_LEASE_TTL:g}], got {ttl!r}")

    def _lease_now(self, cur: Cursor) -> float:
        if self._lease_clock is not None:
            return self._lease_clock()
        return float(cur.rows(self._now_sql)[0][0])

    def lease_clock(self) -> float:
        if self._lease_clock is not None:
            return self._lease_clock()
        with self._db.read("cannot read the database's clock") as cur:
            return self._lease_now(cur)

    def get_lease(self) -> Lease | None:
        with self._db.read("cannot read the server lease") as cur:
            holder, token, deadline, acquired = self._lease_row(cur, "")
        return Lease(holder, token, deadline, acquired) if holder else None

    def acquire_lease(self, holder: str, ttl: float) -> Lease | None:
        self._check_lease_args(holder, ttl)
        with self._db.write(f"cannot acquire the server lease for {holder:.60}") as cur:
            current, token, deadline, _ = self._lease_row(cur, "FOR UPDATE")
            now = self._lease_now(cur)
            if current and current != holder and deadline > now:
                return None
            lease = Lease(holder, token + 1, now + ttl, now)
            cur.run(
                "UPDATE lease SET holder = ?, fencing_token = ?, deadline = ?, acquired = ? WHERE name = 'server'",
                (lease.holder, lease.fencing_token, lease.deadline, lease.acquired),
            )
            return lease

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        self._check_lease_args(lease.holder, ttl)
        with self._db.write(f"cannot renew the server lease of {lease.holder:.60}") as cur:
            holder, token, deadline, acquired = self._lease_row(cur, "FOR UPDATE")
            now = self._lease_now(cur)
            if holder != lease.holder or token != lease.fencing_token:
                raise LeaseLostError(
                    f"{self._where}: replica {lease.holder} cannot renew the server lease: "
                    f"{holder or 'nobody'} holds it now (fencing token {token})"
                )
            if deadline <= now:
                raise LeaseLostError(
                    f"{self._where}: replica {lease.holder} cannot renew the server lease: "
                    f"it lapsed {now - deadline:.1f} s ago"
                )
            renewed = Lease(holder, token, now + ttl, acquired)
            cur.run("UPDATE lease SET deadline = ? WHERE name = 'server'", (renewed.deadline,))
            return renewed

    def release_lease(self, lease: Lease) -> None:
        with self._db.write(f"cannot release the server lease of {lease.holder:.60}") as cur:
            holder, token, _, _ = self._lease_row(cur, "FOR UPDATE")
            if holder == lease.holder and token == lease.fencing_token:  # else: not ours any more, nothing to do
                cur.run("UPDATE lease SET holder = '', deadline = 0 WHERE name = 'server'")

    # ------------------------------------------------------------ audit

    def append_audit(self, entry: AuditEntry) -> None:
        row = (
            float(entry.time), entry.admin, entry.org, entry.role, entry.command,
            _dump({str(k): str(v) for k, v in entry.args.items()}), entry.outcome, entry.detail,
        )  # fmt: skip
        with self._db.write("cannot append to the audit trail") as cur:
            cur.run(
                "INSERT INTO audit (time, admin, org, role, command, args, outcome, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def audit_tail(self, count: int) -> list[AuditEntry]:
        count = max(1, min(int(count), MAX_AUDIT_TAIL))
        sql = (
            f"SELECT time, admin, org, role, command, args, outcome, detail FROM audit ORDER BY seq DESC LIMIT {count}"  # noqa: S608
        )
        with self._db.read("cannot read the audit trail") as cur:
            rows = cur.rows(sql)
        return [
            AuditEntry(float(t), a, o, r, c, json.loads(args), out, d) for t, a, o, r, c, args, out, d in reversed(rows)
        ]

    def close(self) -> None:
        self._db.close()
