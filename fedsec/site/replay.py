"""A site's record of the jobs it has started, and the rule that one signed job runs once here.

A job's signature covers its job id and the submit time its submitter chose
(fedsec.jobs.signing). This module keeps, in <kit>/jobs/.seen.sqlite, each job
id this site has started: its signed submit time, when it first started, how
many times it started, and when its script ended. check_start() is what the
runner calls once the signature and the site policy have passed, before
anything is unpacked; it raises AuthError when

- the signed submit time is more than limits.JOB_CLOCK_SKEW_SECONDS ahead of this site's clock;
- this site has already run the job to its end (its script exited and the site reported it): a
  signed job runs once, and a server that offers it again is replaying it;
- the job was never started here and its signed submit time is older than the site policy's
  max_job_age_days (a signature does not stay good for a new run forever).

A job this site started but has not seen end may start again whatever its age:
that is a resume, after the site parent or the server restarted mid-job. A
script stopped by the site (no longer assigned, aborted, the site shutting down)
is therefore not recorded as ended. record_end() marks a job ended; it is
called when a script exits by itself.

The record is bounded: entries signed longer ago than limits.MAX_JOB_MAX_AGE_DAYS
(the longest window any policy may set, so such a job is refused for its age
anyway) are dropped, and when limits.MAX_SEEN_JOBS recent entries remain the
site refuses new jobs rather than forget one. This module never trusts a job id
or a time that the signature did not cover.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fedsec import limits
from fedsec.errors import AuthError, JobError
from fedsec.jobs.signing import check_job_id

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)

SEEN_FILE = "jobs/.seen.sqlite"  # under the site kit; never a job id, so never a job's folder
_DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    job_id      TEXT PRIMARY KEY,
    submit_time INTEGER NOT NULL,
    first_start REAL NOT NULL,
    starts      INTEGER NOT NULL,
    ended       REAL
)
"""


def check_start(kit_root: Path, job_id: str, submit_time: int, max_age: float, *, now: float | None = None) -> None:
    """Allow job_id, signed at submit_time, to start on this site now, and record the start.

    max_age is the site policy's window in seconds. Raises AuthError when the job is
    future-dated, has already run to its end here, is new here and older than
    max_age, or when the record is full; JobError when the record cannot be read or
    written (nothing is started then either).
    """
    where = f"job {job_id}"
    try:
        check_job_id(job_id)
    except JobError as exc:
        raise AuthError(str(exc)) from exc
    now = time.time() if now is None else now
    ahead = submit_time - now
    if ahead > limits.JOB_CLOCK_SKEW_SECONDS:
        raise AuthError(
            f"{where}: signed submit time is {ahead:.0f} s in this site's future (more than"
            f" {limits.JOB_CLOCK_SKEW_SECONDS} s); refused"
        )
    with _record(kit_root) as db:
        row = db.execute("SELECT submit_time, ended FROM seen WHERE job_id = ?", (job_id,)).fetchone()
        if row is not None:
            seen_time, ended = row
            if ended is not None:
                raise AuthError(f"{where}: this site already ran this job to its end; a signed job runs once")
            if seen_time != submit_time:
                raise AuthError(f"{where}: signed with submit time {submit_time}, but it started here as {seen_time}")
            db.execute("UPDATE seen SET starts = starts + 1 WHERE job_id = ?", (job_id,))
            log.info("job=%s starts again on this site (a resume)", job_id)
            return
        age = now - submit_time
        if age > max_age:
            raise AuthError(
                f"{where}: signed {age / _DAY:.1f} days ago, older than this site's window of"
                f" {max_age / _DAY:g} days (site policy max_job_age_days); submit it again"
            )
        db.execute("DELETE FROM seen WHERE submit_time < ?", (now - limits.MAX_JOB_MAX_AGE_DAYS * _DAY,))
        (count,) = db.execute("SELECT COUNT(*) FROM seen").fetchone()
        if count >= limits.MAX_SEEN_JOBS:
            raise AuthError(
                f"{where}: this site has started {count} jobs in the last {limits.MAX_JOB_MAX_AGE_DAYS} days,"
                f" the most it keeps a record of; refused"
            )
        db.execute("INSERT INTO seen VALUES (?, ?, ?, 1, NULL)", (job_id, submit_time, now))


def record_end(kit_root: Path, job_id: str, *, now: float | None = None) -> None:
    """Record that job_id's script ended on this site: it never starts here again.

    Never raises: a record that cannot be written is logged as an error (the job
    has ended either way; only a later replay of it would then go unnoticed).
    """
    now = time.time() if now is None else now
    try:
        with _record(kit_root) as db:
            db.execute("UPDATE seen SET ended = ? WHERE job_id = ? AND ended IS NULL", (now, job_id))
    except JobError as exc:
        log.error("job=%s could not record its end: %s", job_id, exc)


def has_ended(kit_root: Path, job_id: str) -> bool:
    """Whether this site recorded job_id's end. Raises JobError when the record cannot be read."""
    with _record(kit_root) as db:
        row = db.execute("SELECT ended FROM seen WHERE job_id = ?", (job_id,)).fetchone()
    return row is not None and row[0] is not None


@contextmanager
def _record(kit_root: Path) -> Iterator[sqlite3.Connection]:
    """The record, in one IMMEDIATE transaction: committed on success, rolled back otherwise."""
    import sqlite3  # only once a job starts: an idle site never loads it

    path = kit_root / SEEN_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise JobError(f"site record of started jobs {path}: cannot open: {exc}") from exc
    try:
        conn.execute(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise JobError(f"site record of started jobs {path}: {exc}") from exc
    finally:
        conn.close()
