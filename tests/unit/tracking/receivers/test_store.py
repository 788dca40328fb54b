"""The embedded MLflow store: set up once under a lock; a poisoned store is set aside and the next job still tracks."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedsec.errors import JobError
from fedsec.tracking.backends import Backend
from fedsec.tracking.events import Event, EventKind, check_event
from fedsec.tracking.receivers import RunEnd, embedded_mlflow_uri, open_receivers, prepare_embedded_store

JOB_ID = "0123456789abcdef0123456789abcdef"


def db_of(tracking: Path) -> Path:
    return tracking / "mlflow" / "mlflow.db"


def tracks(tracking: Path, job_id: str = JOB_ID) -> None:
    """A job on the embedded store writes a site's scalar, and it is there."""
    (receiver,) = open_receivers(job_id, "job", tracking, Backend("local"), tensorboard=False)
    event = check_event(Event("ab" * 16, 0, EventKind.SCALAR, "loss", 0, 1.7e9, 0.5), "test")
    receiver.site_events("site-1", [event])
    receiver.close(RunEnd.FINISHED)
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tracking))
    experiment = client.get_experiment_by_name("job")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`fedsec.job_id` = '{job_id}'")
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert any("loss" in r.data.metrics for r in runs)


def poison_with_interrupted_migration(db: Path) -> None:
    """What a job killed during MLflow's batch migration left: a valid store plus alembic's temporary table."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250), value FLOAT)")
    con.commit()
    con.close()


def test_fresh_store_is_made_once_and_then_only_looked_at(tmp_path: Path) -> None:
    store = prepare_embedded_store(tmp_path)
    assert store.uri == embedded_mlflow_uri(tmp_path)
    made = db_of(tmp_path).stat()
    prepare_embedded_store(tmp_path)  # ready: nothing is rewritten
    again = db_of(tmp_path).stat()
    assert (made.st_ino, made.st_mtime_ns) == (again.st_ino, again.st_mtime_ns)
    assert not list(db_of(tmp_path).parent.glob("*.broken-*"))
    tracks(tmp_path)


@pytest.mark.parametrize(
    ("poison", "why"),
    [
        (poison_with_interrupted_migration, "interrupted schema migration left the table _alembic_tmp_latest_metrics"),
        (lambda db: sqlite3.connect(db).execute("DROP TABLE alembic_version").connection.commit(), "no schema version"),
        (lambda db: db.write_bytes(b"not a database at all" * 100), "not a usable SQLite database"),
        (
            lambda db: (
                sqlite3.connect(db).execute("UPDATE alembic_version SET version_num = 'f00d'").connection.commit()
            ),
            "could not be upgraded",
        ),
    ],
)
def test_poisoned_store_is_set_aside_and_the_next_job_tracks(
    tmp_path: Path, poison: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracks(tmp_path, "1" * 32)  # a store with a job's runs in it
    assert callable(poison)
    poison(db_of(tmp_path))
    caplog.set_level(logging.WARNING, logger="fedsec.tracking.receivers.store")
    tracks(tmp_path)  # the next job
    (aside,) = db_of(tmp_path).parent.glob("mlflow.db.broken-*")
    assert aside.stat().st_size > 0
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "fedsec.tracking.receivers.store" and r.levelno == logging.WARNING
    ]
    assert why in line and "set aside as tracking/mlflow/mlflow.db.broken-" in line
    assert str(tmp_path) not in line


def test_old_code_path_failed_on_the_poisoned_store(tmp_path: Path) -> None:
    """The poisoning is real: MLflow itself refuses the store (what failed every job before)."""
    prepare_embedded_store(tmp_path)
    poison_with_interrupted_migration(db_of(tmp_path))
    con = sqlite3.connect(db_of(tmp_path))
    con.execute("UPDATE alembic_version SET version_num = '1a2b3c4d5e6f'")  # mid-way through the migrations
    con.commit()
    con.close()
    code = (
        "import sys; from mlflow.tracking import MlflowClient;"
        f"MlflowClient(tracking_uri={embedded_mlflow_uri(tmp_path)!r}).search_experiments()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    tracks(tmp_path)


def test_setup_waits_for_the_lock_and_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    prepare_embedded_store(tmp_path)
    fd = (db_of(tmp_path).parent / ".setup.lock").open("w")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process is setting it up
    try:
        with pytest.raises(JobError, match=r"another process has been setting up tracking/mlflow/mlflow.db"):
            prepare_embedded_store(tmp_path, lock_seconds=0.5)
    finally:
        fd.close()
    prepare_embedded_store(tmp_path)


def test_setup_helper_runs_once_from_the_command_line(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "fedsec.tracking.receivers.store", "--tracking-dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tracking/mlflow/mlflow.db is ready" in done.stderr
    assert db_of(tmp_path).is_file()
