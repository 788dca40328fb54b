"""Schema migrations: a store made by the first fedsec (schema 1, before fedsec.state) opens after the upgrade."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from fedsec.errors import JobError
from fedsec.server.store import JobStore
from fedsec.state import _sql
from fedsec.state.records import JobStatus, RoundKind, RoundRecord
from fedsec.state.sqlite import open_sqlite

# Exactly what fedsec.server.store wrote before the state interface (its _SCHEMA, PRAGMA user_version = 1).
FIRST_SCHEMA = """
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
OLD_JOBS = [
    ("11111111-1111-4111-8111-111111111111", "mnist", "finished:completed", 100.0, 101.0, 150.0, "", 3, 3, 0),
    ("22222222-2222-4222-8222-222222222222", "cifar", "running", 200.0, 201.0, None, "", 5, 2, 1),
    ("33333333-3333-4333-8333-333333333333", "mnist", "finished:failed", 300.0, None, 301.0, "site-1 left", 2, 0, 0),
]


def make_first_store(root: Path) -> Path:
    """A store folder as the first fedsec left it: jobs.db at schema 1 with three jobs, and their folders."""
    root.mkdir(mode=0o700)
    db = root / "jobs.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(FIRST_SCHEMA)
        conn.execute("PRAGMA user_version = 1")
        for job_id, name, status, submit, start, end, reason, rounds, current, resumes in OLD_JOBS:
            conn.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, 'admin@acme.org', 'acme', 'project_admin', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    name,
                    status,
                    submit,
                    start,
                    end,
                    reason,
                    json.dumps({"name": name}),
                    rounds,
                    current,
                    resumes,
                ),
            )
        conn.commit()
    for job_id, *_ in OLD_JOBS:
        (root / "jobs" / job_id).mkdir(parents=True)
        (root / "jobs" / job_id / "job.zip").write_bytes(b"PK")
    return root


def test_a_first_store_opens_after_the_upgrade_with_its_jobs(tmp_path: Path) -> None:
    root = make_first_store(tmp_path / "store")
    with JobStore(root) as store:
        jobs = store.list()
        assert [(r.job_id, r.name, r.status.value) for r in jobs] == [(j[0], j[1], j[2]) for j in OLD_JOBS][::-1]
        cifar = store.get(OLD_JOBS[1][0])
        assert (cifar.status, cifar.current_round, cifar.resume_count, cifar.start_time) == (
            JobStatus.RUNNING,
            2,
            1,
            201.0,
        )
        assert cifar.archive_sha256 == b""  # not kept by the first store
        assert store.get(OLD_JOBS[2][0]).reason == "site-1 left"
        assert [r.job_id for r in store.unfinished()] == [OLD_JOBS[1][0]]
        assert store.find("2222").job_id == OLD_JOBS[1][0]
        # what the first store never had works on its jobs
        store.state.put_round(cifar.job_id, RoundRecord(2, RoundKind.TRAIN, frozenset({"a"}), frozenset({"a"})))
        assert [r.number for r in store.state.rounds(cifar.job_id)] == [2]
        store.set_progress(cifar.job_id, 3)
        assert (store.job_dir(cifar.job_id) / "job.zip").read_bytes() == b"PK"
        assert store.state.schema_version() == _sql.LATEST
    with closing(sqlite3.connect(root / "jobs.db")) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, _sql.LATEST + 1))
        # the first fedsec reads only user_version 1: it now refuses the file instead of misreading it
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _sql.LATEST
    with JobStore(root) as again:  # opening an upgraded store changes nothing
        assert again.get(OLD_JOBS[1][0]).current_round == 3


def test_a_failed_step_leaves_the_store_at_its_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_first_store(tmp_path / "store")
    broken = _sql.Migration(2, "broken", _sql.MIGRATIONS[1].sql + ";\nCREATE TABLE jobs (x TEXT)")
    monkeypatch.setattr(_sql, "MIGRATIONS", (_sql.MIGRATIONS[0], broken))
    with pytest.raises(JobError, match="cannot upgrade the schema to version 2"):
        open_sqlite(root / "jobs.db")
    monkeypatch.undo()
    with JobStore(root) as store:  # the step rolled back whole; it runs again, and works, with the real one
        assert len(store.list()) == 3 and store.state.schema_version() == _sql.LATEST


def test_a_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    open_sqlite(tmp_path / "jobs.db").close()
    with closing(sqlite3.connect(tmp_path / "jobs.db")) as conn, conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'from the future')", (_sql.LATEST + 1,))
    with pytest.raises(JobError, match=f"schema version {_sql.LATEST + 1}, this fedsec reads versions up to"):
        open_sqlite(tmp_path / "jobs.db")
