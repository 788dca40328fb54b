"""The job store against real SQLite files in tmp_path."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedsec import limits
from fedsec.errors import JobError
from fedsec.server import store as store_mod
from fedsec.server.store import JobRecord, JobStatus, JobStore
from tests.unit.conftest import Clock


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[JobStore]:
    with JobStore(tmp_path / "store", clock=clock) as s:
        yield s


def add(s: JobStore, name: str = "mnist", num_rounds: int = 5) -> JobRecord:
    return s.add(
        name=name,
        submitter="admin@acme.org",
        submitter_org="acme",
        submitter_role="project_admin",
        meta_json=json.dumps({"name": name}),
        num_rounds=num_rounds,
    )


def fixed_ids(monkeypatch: pytest.MonkeyPatch, *ids: str) -> None:
    """Make the store hand out these job ids, in order."""
    pending = iter(uuid.UUID(i) for i in ids)
    monkeypatch.setattr(store_mod, "uuid", SimpleNamespace(uuid4=lambda: next(pending)))


# -- add / get / list ---------------------------------------------------------------------


def test_add_then_get(store: JobStore) -> None:
    rec = add(store)
    assert uuid.UUID(rec.job_id).version == 4 and str(uuid.UUID(rec.job_id)) == rec.job_id
    assert rec.status is JobStatus.SUBMITTED and not rec.status.finished
    assert (rec.start_time, rec.end_time, rec.reason) == (None, None, "")
    assert (rec.current_round, rec.resume_count, rec.num_rounds) == (0, 0, 5)
    assert rec.submit_time == 1001.0
    assert store.get(rec.job_id) == rec


def test_get_unknown_job(store: JobStore) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(JobError, match=f"job {missing}: no such job"):
        store.get(missing)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "", "name must be a non-empty string"),
        ("name", "x" * (limits.MAX_JOB_NAME + 1), "longer than"),
        ("submitter", "", "submitter must be a non-empty string"),
        ("meta_json", "{not json", "not valid JSON"),
        ("meta_json", "[1, 2]", "must be a JSON object"),
        ("meta_json", json.dumps({"k": "x" * limits.MAX_META_JSON_BYTES}), "at most"),
        ("meta_json", "[" * 60_000, "not valid JSON"),  # too deep to parse
        ("num_rounds", 0, "num_rounds must be"),
        ("num_rounds", limits.MAX_ROUNDS + 1, "num_rounds must be"),
        ("num_rounds", True, "num_rounds must be"),
    ],
)
def test_add_refuses_bad_fields(store: JobStore, field: str, value: object, message: str) -> None:
    fields: dict[str, object] = {
        "name": "mnist",
        "submitter": "admin@acme.org",
        "submitter_org": "acme",
        "submitter_role": "project_admin",
        "meta_json": "{}",
        "num_rounds": 3,
    }
    fields[field] = value
    with pytest.raises(JobError, match=message):
        store.add(**fields)  # type: ignore[arg-type]
    assert store.list() == []


def test_list_newest_first_with_limit(store: JobStore) -> None:
    recs = [add(store, f"job-{i}") for i in range(5)]
    assert [r.job_id for r in store.list()] == [r.job_id for r in reversed(recs)]
    assert [r.name for r in store.list(limit=2)] == ["job-4", "job-3"]


def test_list_ties_on_submit_time_keep_newest_insert_first(tmp_path: Path) -> None:
    with JobStore(tmp_path / "store", clock=lambda: 5.0) as s:
        recs = [add(s, f"job-{i}") for i in range(3)]
        assert [r.job_id for r in s.list()] == [r.job_id for r in reversed(recs)]


def test_list_name_prefix_is_literal_and_case_sensitive(store: JobStore) -> None:
    for name in ["a%b", "axb", "a_c", "abc", "Mnist-1", "mnist-2"]:
        add(store, name)
    assert [r.name for r in store.list(name_prefix="a%")] == ["a%b"]
    assert [r.name for r in store.list(name_prefix="a_")] == ["a_c"]
    assert [r.name for r in store.list(name_prefix="a")] == ["abc", "a_c", "axb", "a%b"]
    assert [r.name for r in store.list(name_prefix="mnist")] == ["mnist-2"]
    assert store.list(name_prefix="zzz") == []


def test_list_id_prefix(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_ids(
        monkeypatch,
        "abcd0000-0000-4000-8000-000000000001",
        "abcd1111-0000-4000-8000-000000000002",
        "ffff0000-0000-4000-8000-000000000003",
    )
    for _ in range(3):
        add(store)
    assert [r.job_id[:8] for r in store.list(id_prefix="abcd")] == ["abcd1111", "abcd0000"]
    assert [r.job_id[:8] for r in store.list(id_prefix="ABCD1", name_prefix="mn")] == ["abcd1111"]
    assert store.list(id_prefix="abcd", name_prefix="other") == []


@pytest.mark.parametrize("limit", [0, -1, limits.MAX_LIST_JOBS + 1])
def test_list_limit_is_bounded(store: JobStore, limit: int) -> None:
    with pytest.raises(JobError, match="list limit"):
        store.list(limit=limit)


# -- find ---------------------------------------------------------------------------------


def test_find_by_prefix(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_ids(
        monkeypatch,
        "abcd0000-0000-4000-8000-000000000001",
        "abcd1111-0000-4000-8000-000000000002",
        "abce0000-0000-4000-8000-000000000003",
    )
    first, second, third = add(store), add(store), add(store)
    assert store.find("abcd0") == first
    assert store.find("ABCD1") == second
    assert store.find("abce") == third
    assert store.find(first.job_id) == first
    with pytest.raises(JobError, match="ambiguous, 2 jobs"):
        store.find("abcd")
    for unknown in ("abcc", "1234", "abcd2"):
        with pytest.raises(JobError, match=f"job {unknown}: no such job"):
            store.find(unknown)


def test_find_counts_every_match(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_ids(monkeypatch, *(f"abcd000{i}-0000-4000-8000-000000000000" for i in range(3)))
    for _ in range(3):
        add(store)
    with pytest.raises(JobError, match="ambiguous, 3 jobs"):
        store.find("abcd")


@pytest.mark.parametrize("prefix", ["", "abc", "../x", "abcd%", "abcd_", "g" * 8, "a" * 37])
def test_find_refuses_short_or_malformed_prefixes(store: JobStore, prefix: str) -> None:
    add(store)
    with pytest.raises(JobError, match="at least 4 characters of a job id"):
        store.find(prefix)


# -- transitions --------------------------------------------------------------------------

START = {
    "submitted": [],
    "running": ["run"],
    "completed": ["run", "complete"],
    "aborted": ["abort"],
    "failed": ["run", "fail"],
}


def _apply(s: JobStore, job_id: str, step: str) -> JobRecord:
    actions: dict[str, Callable[[], JobRecord]] = {
        "run": lambda: s.set_running(job_id),
        "complete": lambda: s.finish(job_id, JobStatus.COMPLETED),
        "abort": lambda: s.finish(job_id, JobStatus.ABORTED, "stopped by admin"),
        "fail": lambda: s.finish(job_id, JobStatus.FAILED, "site-1 crashed"),
    }
    return actions[step]()


# (state the job is in, step, state after it, or None when the step is refused)
TRANSITIONS = [
    ("submitted", "run", JobStatus.RUNNING),
    ("submitted", "complete", None),
    ("submitted", "abort", JobStatus.ABORTED),
    ("submitted", "fail", JobStatus.FAILED),
    ("running", "run", JobStatus.RUNNING),
    ("running", "complete", JobStatus.COMPLETED),
    ("running", "abort", JobStatus.ABORTED),
    ("running", "fail", JobStatus.FAILED),
    ("completed", "run", None),
    ("aborted", "run", None),
    ("failed", "run", None),
    # a finished job keeps its first final status
    ("completed", "abort", JobStatus.COMPLETED),
    ("completed", "fail", JobStatus.COMPLETED),
    ("aborted", "complete", JobStatus.ABORTED),
    ("failed", "abort", JobStatus.FAILED),
]


@pytest.mark.parametrize(("start", "step", "after"), TRANSITIONS)
def test_transitions(store: JobStore, start: str, step: str, after: JobStatus | None) -> None:
    job_id = add(store).job_id
    for earlier in START[start]:
        _apply(store, job_id, earlier)
    before = store.get(job_id)
    if after is None:
        with pytest.raises(JobError) as info:
            _apply(store, job_id, step)
        message = str(info.value)
        assert job_id in message and f"from {before.status.value} to " in message, message
        assert store.get(job_id) == before
    else:
        rec = _apply(store, job_id, step)
        assert rec.status is after
        assert store.get(job_id) == rec
        if after.finished:
            assert rec.end_time is not None
        if before.status.finished:
            assert rec == before


@pytest.mark.parametrize("status", [JobStatus.SUBMITTED, JobStatus.RUNNING])
def test_finish_only_to_a_final_status(store: JobStore, status: JobStatus) -> None:
    job_id = add(store).job_id
    store.set_running(job_id)
    with pytest.raises(JobError, match="not a final one"):
        store.finish(job_id, status)


def test_finish_first_final_status_wins(store: JobStore) -> None:
    job_id = add(store).job_id
    store.set_running(job_id)
    done = store.finish(job_id, JobStatus.COMPLETED)
    assert done.reason == "" and done.end_time is not None
    late = store.finish(job_id, JobStatus.ABORTED, "abort came late")
    assert late == done == store.get(job_id)


def test_finish_reason_is_bounded(store: JobStore) -> None:
    job_id = add(store).job_id
    rec = store.finish(job_id, JobStatus.FAILED, "x" * (limits.MAX_ERROR_TEXT + 100))
    assert rec.reason == "x" * limits.MAX_ERROR_TEXT
    assert rec.start_time is None


def test_set_running_again_counts_resumes(store: JobStore) -> None:
    job_id = add(store).job_id
    started = store.set_running(job_id)
    assert started.start_time is not None and started.resume_count == 0
    assert store.set_running(job_id).resume_count == 1
    again = store.set_running(job_id)
    assert again.resume_count == 2
    assert again.start_time == started.start_time


def test_set_progress(store: JobStore) -> None:
    job_id = add(store, num_rounds=3).job_id
    with pytest.raises(JobError, match="cannot record progress while submitted"):
        store.set_progress(job_id, 1)
    store.set_running(job_id)
    store.set_progress(job_id, 2)
    store.set_progress(job_id, 2)
    assert store.get(job_id).current_round == 2
    for bad in (1, 4, -1):
        with pytest.raises(JobError, match=f"current_round {bad} is outside 2..3"):
            store.set_progress(job_id, bad)
    store.set_progress(job_id, 3)
    store.finish(job_id, JobStatus.COMPLETED)
    with pytest.raises(JobError, match="while finished:completed"):
        store.set_progress(job_id, 3)
    assert store.get(job_id).current_round == 3


def test_unknown_job_in_transitions(store: JobStore) -> None:
    missing = str(uuid.uuid4())
    for call in (
        lambda: store.set_running(missing),
        lambda: store.set_progress(missing, 1),
        lambda: store.finish(missing, JobStatus.ABORTED),
        lambda: store.delete(missing),
        lambda: store.job_dir(missing),
    ):
        with pytest.raises(JobError, match="no such job"):
            call()


# -- persistence and resuming -------------------------------------------------------------


def test_records_survive_reopen(tmp_path: Path) -> None:
    root = tmp_path / "kit" / "store"
    with JobStore(root) as s:
        done = add(s, "done")
        s.set_running(done.job_id)
        s.set_progress(done.job_id, 5)
        done = s.finish(done.job_id, JobStatus.COMPLETED)
        live = add(s, "live")
        s.set_running(live.job_id)
        s.set_progress(live.job_id, 2)
        live = s.get(live.job_id)
    with JobStore(root) as s:
        assert s.list() == [live, done]
        assert s.unfinished() == [live]
        assert s.set_running(live.job_id).resume_count == 1
    with closing(sqlite3.connect(root / "jobs.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION


def test_unfinished_oldest_first(store: JobStore) -> None:
    _, b, c, d = (add(store, n) for n in "abcd")
    store.set_running(b.job_id)
    store.finish(c.job_id, JobStatus.ABORTED)
    store.set_running(d.job_id)
    store.finish(d.job_id, JobStatus.FAILED, "boom")
    assert [r.name for r in store.unfinished()] == ["a", "b"]


def test_closed_store_raises_job_error(tmp_path: Path) -> None:
    s = JobStore(tmp_path / "store")
    rec = add(s)
    s.close()
    with pytest.raises(JobError, match="closed"):
        s.get(rec.job_id)


def test_concurrent_writers(store: JobStore) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                job_id = add(store).job_id
                store.set_running(job_id)
                store.finish(job_id, JobStatus.COMPLETED)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    jobs = store.list()
    assert len(jobs) == 160 and all(r.status is JobStatus.COMPLETED for r in jobs)


# -- folders ------------------------------------------------------------------------------


def test_folders_are_private(store: JobStore) -> None:
    rec = add(store)
    path = store.job_dir(rec.job_id)
    assert path == store.root / "jobs" / rec.job_id and path.is_dir()
    for folder in (store.root, store.root / "jobs", path):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert (store.root / "jobs.db").stat().st_mode & 0o777 == 0o600
    assert store.job_dir(rec.job_id) == path  # a second call is fine


def test_delete_refuses_unfinished_jobs(store: JobStore) -> None:
    rec = add(store)
    for step in ([], ["run"]):
        for s in step:
            _apply(store, rec.job_id, s)
        folder = store.job_dir(rec.job_id)
        (folder / "job.zip").write_bytes(b"zip")
        with pytest.raises(JobError, match="cannot delete it while"):
            store.delete(rec.job_id)
        assert (folder / "job.zip").exists()
        assert store.get(rec.job_id).job_id == rec.job_id


def test_delete_finished_job_removes_record_and_folder(store: JobStore) -> None:
    keep, gone = add(store, "keep"), add(store, "gone")
    for rec in (keep, gone):
        (store.job_dir(rec.job_id) / "workspace").mkdir()
        store.finish(rec.job_id, JobStatus.ABORTED)
    (store.job_dir(gone.job_id) / "workspace" / "ckpt").write_bytes(b"x")
    store.delete(gone.job_id)
    assert not (store.root / "jobs" / gone.job_id).exists()
    assert sorted(os.listdir(store.root / "jobs")) == [keep.job_id]
    with pytest.raises(JobError, match="no such job"):
        store.get(gone.job_id)
    assert [r.name for r in store.list()] == ["keep"]
    with pytest.raises(JobError, match="no such job"):
        store.delete(gone.job_id)


def test_delete_without_folder(store: JobStore) -> None:
    rec = add(store)
    store.finish(rec.job_id, JobStatus.FAILED, "bad archive")
    store.delete(rec.job_id)
    assert store.list() == []


def test_open_sweeps_interrupted_deletes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with JobStore(root) as s:
        rec = add(s)
        s.job_dir(rec.job_id)
    leftover = root / "jobs" / f"{uuid.uuid4()}.deleting"
    (leftover / "workspace").mkdir(parents=True)
    with JobStore(root) as s:
        assert not leftover.exists()
        assert (root / "jobs" / rec.job_id).is_dir()
        assert s.get(rec.job_id) == rec


BAD_IDS = ["../x", "../../etc", "/etc/passwd", "", ".", "x" * 1000, str(uuid.uuid4()).upper(), str(uuid.uuid1())]


@pytest.mark.parametrize("job_id", BAD_IDS)
def test_malformed_job_ids_are_refused(store: JobStore, job_id: str) -> None:
    add(store)
    calls: list[Callable[[], object]] = [
        lambda: store.get(job_id),
        lambda: store.job_dir(job_id),
        lambda: store.delete(job_id),
        lambda: store.set_running(job_id),
        lambda: store.set_progress(job_id, 1),
        lambda: store.finish(job_id, JobStatus.ABORTED),
    ]
    for call in calls:
        with pytest.raises(JobError, match="not a valid job id"):
            call()
    assert sorted(p.name for p in store.root.parent.iterdir()) == ["store"]
    assert list((store.root / "jobs").iterdir()) == []


# -- damaged databases --------------------------------------------------------------------


def test_corrupt_database_is_a_job_error(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "jobs.db").write_bytes(os.urandom(8192))
    with pytest.raises(JobError, match=r"job store .*store: cannot open jobs.db: file is not a database"):
        JobStore(root)


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    with closing(sqlite3.connect(root / "jobs.db")) as conn, conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(JobError, match="not a fedsec job store"):
        JobStore(root)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    JobStore(root).close()
    with closing(sqlite3.connect(root / "jobs.db")) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(
        JobError, match=f"schema version 99, this fedsec reads versions up to {store_mod.SCHEMA_VERSION}"
    ):
        JobStore(root)


def test_unknown_status_in_the_database(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with JobStore(root) as s:
        rec = add(s)
    with closing(sqlite3.connect(root / "jobs.db")) as conn, conn:
        conn.execute("UPDATE jobs SET status = 'dispatched?'")
    with JobStore(root) as s, pytest.raises(JobError, match="unknown status 'dispatched\\?'"):
        s.get(rec.job_id)
