"""A site runs one signed job once: replayed, stale and future-dated jobs are refused; resumes are not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import AuthError, JobError
from fedsec.jobs.signing import new_job_id
from fedsec.site import replay

NOW = 1_750_000_000.0
DAY = 86400.0
WEEK = 7 * DAY


def test_new_recent_job_starts(tmp_path: Path) -> None:
    job = new_job_id()
    replay.check_start(tmp_path, job, int(NOW - 60), WEEK, now=NOW)
    assert not replay.has_ended(tmp_path, job)
    assert (tmp_path / replay.SEEN_FILE).is_file()


def test_job_that_ran_to_its_end_is_refused(tmp_path: Path) -> None:
    job = new_job_id()
    replay.check_start(tmp_path, job, int(NOW - 60), WEEK, now=NOW)
    replay.record_end(tmp_path, job, now=NOW + 10)
    assert replay.has_ended(tmp_path, job)
    with pytest.raises(AuthError, match=f"job {job}: this site already ran this job to its end"):
        replay.check_start(tmp_path, job, int(NOW - 60), WEEK, now=NOW + 20)


def test_record_survives_a_new_process(tmp_path: Path) -> None:
    """The record is a file of the kit: a site restarted later still refuses the replay."""
    job = new_job_id()
    replay.check_start(tmp_path, job, int(NOW), WEEK, now=NOW)
    replay.record_end(tmp_path, job, now=NOW + 1)
    with sqlite3.connect(tmp_path / replay.SEEN_FILE) as db:
        assert db.execute("SELECT job_id FROM seen WHERE ended IS NOT NULL").fetchall() == [(job,)]


def test_resume_of_an_unended_job_is_allowed_whatever_its_age(tmp_path: Path) -> None:
    """The site parent (or the server) restarted mid-job: the same job id starts again."""
    job = new_job_id()
    replay.check_start(tmp_path, job, int(NOW - 6 * DAY), WEEK, now=NOW)
    replay.check_start(tmp_path, job, int(NOW - 6 * DAY), WEEK, now=NOW + 3 * DAY)  # now 9 days old
    with sqlite3.connect(tmp_path / replay.SEEN_FILE) as db:
        assert db.execute("SELECT starts FROM seen WHERE job_id = ?", (job,)).fetchone() == (2,)
    replay.record_end(tmp_path, job, now=NOW + 4 * DAY)
    with pytest.raises(AuthError, match="already ran this job to its end"):
        replay.check_start(tmp_path, job, int(NOW - 6 * DAY), WEEK, now=NOW + 5 * DAY)


def test_resume_with_another_submit_time_is_refused(tmp_path: Path) -> None:
    job = new_job_id()
    replay.check_start(tmp_path, job, int(NOW - 60), WEEK, now=NOW)
    with pytest.raises(AuthError, match="signed with submit time"):
        replay.check_start(tmp_path, job, int(NOW - 30), WEEK, now=NOW)


@pytest.mark.parametrize(
    ("age", "window", "ok"),
    [
        (WEEK - 1, WEEK, True),
        (WEEK + 1, WEEK, False),
        (30 * DAY, WEEK, False),
        (30 * DAY, 31 * DAY, True),
        (2 * DAY, DAY, False),
    ],
    ids=["just inside", "just outside", "a month", "a month, long window", "two days, one-day window"],
)
def test_new_job_older_than_the_window_is_refused(tmp_path: Path, age: float, window: float, ok: bool) -> None:
    job = new_job_id()
    if ok:
        replay.check_start(tmp_path, job, int(NOW - age), window, now=NOW)
        return
    with pytest.raises(AuthError, match=rf"job {job}: signed \d+\.\d days ago, older than this site's window"):
        replay.check_start(tmp_path, job, int(NOW - age), window, now=NOW)
    with sqlite3.connect(tmp_path / replay.SEEN_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM seen").fetchone() == (0,)  # a refused job is not recorded


@pytest.mark.parametrize(
    ("ahead", "ok"),
    [(0, True), (limits.JOB_CLOCK_SKEW_SECONDS, True), (limits.JOB_CLOCK_SKEW_SECONDS + 1, False), (DAY, False)],
    ids=["now", "at the skew", "past the skew", "a day ahead"],
)
def test_future_dated_job_is_refused(tmp_path: Path, ahead: float, ok: bool) -> None:
    job = new_job_id()
    if ok:
        replay.check_start(tmp_path, job, int(NOW + ahead), WEEK, now=NOW)
        return
    with pytest.raises(AuthError, match="in this site's future"):
        replay.check_start(tmp_path, job, int(NOW + ahead), WEEK, now=NOW)


@pytest.mark.parametrize("bad", ["../x", "", "job-1", "A" * 36])
def test_not_a_job_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(AuthError, match="not a job id"):
        replay.check_start(tmp_path, bad, int(NOW), WEEK, now=NOW)
    assert not (tmp_path / replay.SEEN_FILE).exists()


def test_record_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SEEN_JOBS", 3)
    old = new_job_id()
    replay.check_start(tmp_path, old, int(NOW), WEEK, now=NOW)
    later = NOW + limits.MAX_JOB_MAX_AGE_DAYS * DAY + DAY  # `old` is now past any window a site may set
    jobs = [new_job_id() for _ in range(3)]
    for job in jobs:
        replay.check_start(tmp_path, job, int(later), WEEK, now=later)  # `old` was dropped to make room
    with pytest.raises(AuthError, match="the most it keeps a record of"):
        replay.check_start(tmp_path, new_job_id(), int(later), WEEK, now=later)
    with pytest.raises(AuthError, match="older than this site's window"):
        replay.check_start(tmp_path, old, int(NOW), WEEK, now=later)  # forgotten, and still refused
    replay.check_start(tmp_path, jobs[0], int(later), WEEK, now=later)  # a resume needs no new room


def test_unreadable_record_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / replay.SEEN_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(JobError, match="site record of started jobs"):
        replay.check_start(tmp_path, new_job_id(), int(NOW), WEEK, now=NOW)
    replay.record_end(tmp_path, new_job_id(), now=NOW)  # logged, never raised: the script has ended anyway
