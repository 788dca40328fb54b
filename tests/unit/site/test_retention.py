"""Old job folders on a site: deleted after the operator's job_retention_days, never a running or a recent one."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

import pytest

from fedsec.errors import JobError
from fedsec.site.runner import JobRunner
from fedsec.site.spool import EventSpool
from fedsec.tracking.events import Event, EventKind

DAY = 86400.0
NOW = 1_800_000_000.0


def job_folder(kit: Path, job_id: str, age_days: float, log_age_days: float | None = None) -> Path:
    """A job folder as a runner leaves it (job/, work/, log.txt), last touched age_days before NOW."""
    folder = kit / "jobs" / job_id
    (folder / "job").mkdir(parents=True)
    (folder / "work").mkdir()
    (folder / "log.txt").write_text("the script's log\n")
    for path in (folder / "job", folder / "work", folder, folder / "log.txt"):
        when = NOW - age_days * DAY
        os.utime(path, (when, when))
    if log_age_days is not None:
        os.utime(folder / "log.txt", (NOW - log_age_days * DAY, NOW - log_age_days * DAY))
    return folder


def runner(kit: Path) -> JobRunner:
    return JobRunner(kit, "site-1", cast(Any, None), cast(Any, None), lambda *a: None, cast(Any, None))


def test_folders_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    old = job_folder(tmp_path, "old-job", 31)
    recent = job_folder(tmp_path, "recent-job", 29)
    logged = job_folder(tmp_path, "logged-lately", 40, log_age_days=1)  # its script wrote its log a day ago
    busy = job_folder(tmp_path, "running-job", 400)
    jobs = runner(tmp_path)
    jobs._jobs["running-job"] = cast(Any, None)  # its script is running
    assert jobs.remove_old_jobs(NOW) == ["old-job"]
    assert not old.exists()
    assert recent.is_dir() and logged.is_dir() and busy.is_dir()


def test_the_operator_sets_the_retention(tmp_path: Path) -> None:
    settings = tmp_path / "local" / "site_settings.yml"
    settings.parent.mkdir()
    settings.write_text("job_retention_days: 2\n")
    settings.chmod(0o600)
    job_folder(tmp_path, "three-days", 3)
    job_folder(tmp_path, "one-day", 1)
    assert runner(tmp_path).remove_old_jobs(NOW) == ["three-days"]
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["one-day"]


def test_no_jobs_folder_is_nothing_to_do(tmp_path: Path) -> None:
    assert runner(tmp_path).remove_old_jobs(time.time()) == []


def test_a_full_disk_under_the_spool_says_so_and_leaves_no_cut_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk is injected: the write stores half the bytes (as a full file system does), then fails."""
    spool = EventSpool(tmp_path / "tracking")
    event = Event("e" * 32, 0, EventKind.SCALAR, "loss", 0, NOW, 1.0)
    spool.append("job-1", [event])
    path = tmp_path / "tracking" / "job-1" / "events.jsonl"
    before = path.read_bytes()
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(JobError, match=r"job job-1: the site's disk is full: cannot store events in the site's spool"):
        spool.append("job-1", [event, event])
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == before


def test_the_ready_job_folder_of_the_warm_launcher_is_never_an_old_job(tmp_path: Path) -> None:
    jobs = runner(tmp_path)
    ready = job_folder(tmp_path, ".warm-abc123", 400)  # a ready job process may wait longer than the retention
    assert jobs.remove_old_jobs(NOW) == []
    assert ready.is_dir()


def test_a_ready_job_folder_left_by_an_earlier_run_is_removed_at_start(tmp_path: Path) -> None:
    left = job_folder(tmp_path, ".warm-abc123", 0)  # the site was killed while a job process was ready
    job = job_folder(tmp_path, "a-job", 0)
    runner(tmp_path)
    assert not left.exists() and job.is_dir()
