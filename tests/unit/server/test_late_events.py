"""Events a site sends after its job ended: stored by the server parent, written to MLflow by a late-events writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fedsec import limits
from fedsec.errors import JobError, WireError
from fedsec.jobs import FedAvgRecipe
from fedsec.server.jobs import JobManager
from fedsec.server.store import JobRecord, JobStatus, JobStore
from fedsec.tracking.events import Event, EventKind, to_proto
from fedsec.tracking.receivers import embedded_mlflow_uri
from fedsec.wire import fedsec_pb2
from tests.integration.harness import wait_until

WRITER = "c" * 32


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    (tmp_path / "kit" / "run").mkdir(parents=True)
    return tmp_path / "kit"


@pytest.fixture
def store(kit: Path) -> Iterator[JobStore]:
    with JobStore(kit / "store") as s:
        yield s


def ended_job(store: JobStore, tmp_path: Path, status: JobStatus) -> JobRecord:
    record = store.add(
        name="late",
        submitter="admin@acme.org",
        submitter_org="acme",
        submitter_role="project_admin",
        meta_json="{}",
        num_rounds=1,
    )
    store.set_running(record.job_id)
    store.finish(record.job_id, status, "ended for the test")
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('never run')\n")
    FedAvgRecipe("late", {"w": np.zeros(2, np.float32)}, script, 1, 1).export(store.job_dir(record.job_id) / "job")
    return record


def batch(job_id: str, steps: range) -> fedsec_pb2.EventBatch:
    events = [
        Event(WRITER, i, EventKind.SCALAR, "loss", step, 1.7e9 + step, 1.0 / (step + 1)) for i, step in enumerate(steps)
    ]
    return fedsec_pb2.EventBatch(job_id=job_id, site="site-1", events=[to_proto(e) for e in events])


@pytest.fixture
def manager(kit: Path, store: JobStore) -> Iterator[JobManager]:
    jobs = JobManager(store, kit / "run", frozenset, cast(Any, None), None)
    yield jobs
    jobs.close()


def test_events_of_an_ended_job_reach_mlflow(manager: JobManager, store: JobStore, kit: Path, tmp_path: Path) -> None:
    record = ended_job(store, tmp_path, JobStatus.ABORTED)
    assert manager.send_events(batch(record.job_id, range(3))).stored == 3
    assert manager.send_events(batch(record.job_id, range(3))).stored == 3  # sent again: stored once in MLflow
    late = store.job_dir(record.job_id) / "late_events"
    wait_until(lambda: not any(late.glob("*.pb")), 300, "the late-events writer to write both batches")
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(kit / "tracking"))
    experiment = client.get_experiment_by_name("late")
    assert experiment is not None
    runs = {r.data.tags.get("fedsec.site", "server"): r for r in client.search_runs([experiment.experiment_id])}
    history = client.get_metric_history(runs["site-1"].info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    # the writer ends the runs as the job ended, after its last batch
    wait_until(lambda: not manager._late_writers, 300, "the late-events writer to end")
    assert {r.info.status for r in client.search_runs([experiment.experiment_id])} == {"KILLED"}


def test_events_past_the_window_are_refused_for_good(
    manager: JobManager, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = ended_job(store, tmp_path, JobStatus.COMPLETED)
    monkeypatch.setattr(limits, "TRACKING_LATE_EVENTS_SECONDS", -1)
    with pytest.raises(
        JobError, match=r"ended 0\.0 days ago; the server stores a job's events for .* days after its end"
    ):
        manager.send_events(batch(record.job_id, range(2)))
    assert not (store.job_dir(record.job_id) / "late_events").exists()


def test_bad_late_events_are_refused_and_not_stored(manager: JobManager, store: JobStore, tmp_path: Path) -> None:
    record = ended_job(store, tmp_path, JobStatus.FAILED)
    bad = batch(record.job_id, range(1))
    bad.events[0].tag = ""
    with pytest.raises(WireError):
        manager.send_events(bad)
    assert not any((store.job_dir(record.job_id) / "late_events").glob("*.pb"))


def test_a_sites_report_is_stored_without_terminal_controls(
    manager: JobManager, store: JobStore, tmp_path: Path
) -> None:
    record = ended_job(store, tmp_path, JobStatus.ABORTED)
    manager.fetched(record.job_id, "site-1")
    hostile = "boom\x1b]52;c;cm0gLXJm\x07\x1b[2J\x9b1m"
    manager.report(record.job_id, "site-1", True, hostile, "log " + hostile)
    (report,) = store.state.site_reports(record.job_id)
    for text in (report.error, report.log_tail):
        assert "boom" in text and not any(c in text for c in "\x1b\x07\x9b"), repr(text)


def test_no_late_writer_runs_beside_a_running_job_and_one_runs_once_it_ended(
    kit: Path, store: JobStore, tmp_path: Path
) -> None:
    """What a job's tracking left waiting (workspace/tracking_pending.json) is the late writer's only after the
    job ended: beside a running job's workflow, which takes it up itself, it would race it for the file."""
    record = ended_job(store, tmp_path, JobStatus.COMPLETED)
    running = store.add(
        name="late", submitter="admin@acme.org", submitter_org="acme", submitter_role="project_admin",
        meta_json="{}", num_rounds=1,
    )  # fmt: skip
    store.set_running(running.job_id)
    for job_id in (record.job_id, running.job_id):
        workspace = store.job_dir(job_id) / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        (workspace / "tracking_pending.json").write_text('{"metrics": {}, "params": {"a": "b"}, "has_model": false}')
    jobs = JobManager(store, kit / "run", frozenset, cast(Any, None), None)  # finds both files as it starts
    try:
        jobs._stop.set()  # no reaper loop: the test drives the late writers itself
        with jobs._lock:
            jobs._late_due = dict.fromkeys(jobs._late_due, 0.0)
        jobs._run_late_writers()
        with jobs._lock:
            assert set(jobs._late_writers) == {record.job_id}  # the ended job's writer runs
            assert running.job_id in jobs._late_due  # the running job's waits until it ends
    finally:
        jobs.close()
