"""The server parent's side of a workflow's state: its reports are recorded through the store, admins see them
as the progress document, and a starting workflow is handed them back from the store (no file in between)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from fedsec.server import jobs as server_jobs
from fedsec.server.job_sites import JobSites
from fedsec.server.jobs import JobManager
from fedsec.server.store import JobStatus, JobStore
from fedsec.state.records import Refusal, RoundKind, RoundRecord
from fedsec.wire import fedsec_pb2, job_state


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore(tmp_path / "kit" / "store") as s:
        yield s


@pytest.fixture
def manager(tmp_path: Path, store: JobStore) -> Iterator[JobManager]:
    (tmp_path / "kit" / "run").mkdir(parents=True)
    jobs = JobManager(store, tmp_path / "kit" / "run", frozenset, cast(Any, None), None)
    yield jobs
    jobs.close()


def running_job(store: JobStore, num_rounds: int = 3) -> str:
    record = store.add(
        name="linear", submitter="admin@acme.org", submitter_org="acme", submitter_role="project_admin",
        meta_json="{}", num_rounds=num_rounds,
    )  # fmt: skip
    store.set_running(record.job_id)
    return record.job_id


def flow(job_id: str) -> Any:
    """A workflow as the parent holds it, with no process behind it (the reports are handed in directly)."""
    return server_jobs._Workflow(
        job_id, frozenset(), cast(Any, None), cast(Any, None), cast(Any, None), 60, 1, 0, set()
    )


def report(seq: int, **what: Any) -> fedsec_pb2.StateReport:
    return fedsec_pb2.StateReport(seq=seq, **what)


def test_a_workflows_reports_reach_the_store_and_admins_and_come_back_to_a_resumed_workflow(
    manager: JobManager, store: JobStore
) -> None:
    job_id = running_job(store)
    assert manager.progress(job_id) == ""  # nothing yet
    sites = JobSites.load(store.state, job_id, store.job_path(job_id))
    sites.fetched |= {"s1", "s2", "s3"}
    sites.fail("s3", "MemoryError", was_running=False, max_restarts=1)
    sites.save()
    running = flow(job_id)
    round_0 = RoundRecord(0, RoundKind.TRAIN, frozenset({"s1", "s2", "s3"}), frozenset({"s1"}), {"s2": "NaN"},
                          frozenset({"s3"}), {"loss": 0.5})  # fmt: skip
    manager._record_report(running, report(1, refusal=job_state.refusal_to_wire(Refusal(0, "s2", "NaN"))))
    manager._record_report(running, report(2, round=job_state.round_to_wire(round_0), completed_rounds=1))
    record = store.get(job_id)
    assert record.current_round == 1 and manager.current_round(job_id) == 1
    assert json.loads(manager.progress(job_id)) == {
        "rounds": [{"round": 0, "metrics": {"loss": 0.5}, "sites": ["s1"], "rejected": ["s2"], "failed": ["s3"]}],
        "final": None,
        "refused": [{"round": 0, "site": "s2", "reason": "NaN"}],
        "sites_left": [{"site": "s3", "reason": "MemoryError"}],
    }
    start = manager._job_start(job_id)  # what a resumed workflow (this replica or another) is handed
    assert start.completed_rounds == 1
    assert list(start.counted) == ["s1"]  # the sites whose results counted (the tracking runs' num_sites)
    assert [job_state.refusal_from_wire(r, "test") for r in start.refusals] == [Refusal(0, "s2", "NaN")]
    assert dict(start.participation.failures) == {"s3": 1} and [e.site for e in start.participation.left] == ["s3"]
    outcome = fedsec_pb2.WorkflowOutcome(completed=False, reason="only 1 of min_clients=2 sites remain")
    manager._record_report(running, report(3, outcome=outcome))
    assert running.outcome == outcome  # the job ends with it once the process has exited
    assert not [p for p in store.job_path(job_id).rglob("*") if p.suffix == ".json"]  # no file in between


def test_a_count_kept_by_an_older_fedsec_is_taken_once(manager: JobManager, store: JobStore) -> None:
    job_id = running_job(store)
    workspace = store.job_dir(job_id) / "workspace"
    workspace.mkdir()
    (workspace / "state.json").write_text(json.dumps({"completed_rounds": 2}))
    manager._adopt_older_count(job_id, store.job_dir(job_id))
    assert store.get(job_id).current_round == 2
    (workspace / "state.json").write_text(json.dumps({"completed_rounds": 1}))
    manager._adopt_older_count(job_id, store.job_dir(job_id))  # the store's count is the job's from now on
    assert store.get(job_id).current_round == 2
    assert store.get(job_id).status is JobStatus.RUNNING
