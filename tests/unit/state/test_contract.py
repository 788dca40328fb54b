"""The state interface's contract, run against every backend (SQLite, and a real PostgreSQL server)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import JobError, StoreUnavailableError
from fedsec.state import _sql
from fedsec.state.interface import StateStore
from fedsec.state.postgres import open_postgres
from fedsec.state.records import (
    AuditEntry,
    JobStatus,
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
from fedsec.state.sqlite import open_sqlite
from tests import pgserver

DIGEST = hashlib.sha256(b"archive").digest()


def new_job(name: str = "mnist", num_rounds: int = 5, job_id: str = "", **changes: object) -> NewJob:
    fields: dict[str, object] = dict(
        job_id=job_id or str(uuid.uuid4()), name=name, submitter="admin@acme.org", submitter_org="acme",
        submitter_role="project_admin", meta_json=json.dumps({"name": name}), num_rounds=num_rounds,
        archive_sha256=DIGEST,
    )  # fmt: skip
    fields.update(changes)
    return NewJob(**fields)  # type: ignore[arg-type]


def running(state: StateStore, **kw: object) -> str:
    job_id = state.add_job(new_job(**kw)).job_id  # type: ignore[arg-type]
    state.set_running(job_id)
    return job_id


def test_schema_is_at_the_latest_version(backend: StateStore) -> None:
    assert backend.schema_version() == _sql.LATEST


def test_add_then_get(backend: StateStore) -> None:
    job = new_job()
    added = backend.add_job(job)
    assert added == backend.get_job(job.job_id)
    assert added.status is JobStatus.SUBMITTED and added.submit_time == 1001.0
    assert (added.start_time, added.end_time, added.reason, added.current_round) == (None, None, "", 0)
    assert added.archive_sha256 == DIGEST and added.meta_json == job.meta_json


def test_a_job_id_runs_once(backend: StateStore) -> None:
    job = new_job()
    backend.add_job(job)
    with pytest.raises(JobError, match="exists already"):
        backend.add_job(new_job(job_id=job.job_id, name="other"))
    assert backend.get_job(job.job_id).name == "mnist"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"job_id": "not-an-id"}, "not a valid job id"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "x" * (limits.MAX_JOB_NAME + 1)}, "longer than"),
        ({"submitter": ""}, "submitter must be"),
        ({"meta_json": "[1]"}, "must be a JSON object"),
        ({"meta_json": "{"}, "not valid JSON"),
        ({"num_rounds": 0}, "num_rounds must be an integer"),
        ({"num_rounds": True}, "num_rounds must be an integer"),
        ({"archive_sha256": b"short"}, "archive_sha256 must be 32 bytes"),
    ],
)
def test_add_refuses_bad_fields(backend: StateStore, changes: dict[str, object], message: str) -> None:
    with pytest.raises(JobError, match=message):
        backend.add_job(new_job(**changes))  # type: ignore[arg-type]
    assert backend.list_jobs("", "", 10) == []


def test_get_unknown_and_malformed(backend: StateStore) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(JobError, match=f"job {missing}: no such job"):
        backend.get_job(missing)
    with pytest.raises(JobError, match="not a valid job id"):
        backend.get_job("../etc")


def test_list_newest_first_prefixes_literal_and_limited(backend: StateStore) -> None:
    names = ["mnist", "MNIST-b", "mn%st", "mn_st", "cifar"]
    ids = [backend.add_job(new_job(n)).job_id for n in names]
    assert [r.job_id for r in backend.list_jobs("", "", 10)] == ids[::-1]
    assert [r.name for r in backend.list_jobs("", "", 2)] == ["cifar", "mn_st"]
    assert [r.name for r in backend.list_jobs("mn", "", 10)] == ["mn_st", "mn%st", "mnist"]
    assert [r.name for r in backend.list_jobs("mn%", "", 10)] == ["mn%st"]
    assert [r.name for r in backend.list_jobs("mn_", "", 10)] == ["mn_st"]
    assert [r.job_id for r in backend.list_jobs("", ids[0][:8].upper(), 10)] == [ids[0]]
    for bad in (0, limits.MAX_LIST_JOBS + 1):
        with pytest.raises(JobError, match="list limit"):
            backend.list_jobs("", "", bad)


def test_find_by_prefix(backend: StateStore) -> None:
    a = backend.add_job(new_job(job_id="aaaa1111-0000-4000-8000-000000000001"))
    for n in (2, 3):
        backend.add_job(new_job(job_id=f"bbbb2222-0000-4000-8000-00000000000{n}"))
    backend.add_job(new_job(job_id="bbbb3333-0000-4000-8000-000000000004"))
    assert backend.find_job("AAAA") == a
    with pytest.raises(JobError, match="ambiguous, 3 jobs"):
        backend.find_job("bbbb")
    with pytest.raises(JobError, match="ambiguous, 2 jobs"):
        backend.find_job("bbbb2")
    with pytest.raises(JobError, match="job cccc: no such job"):
        backend.find_job("cccc")
    for bad in ("abc", "zzzz", "ab%d"):
        with pytest.raises(JobError, match="at least 4 characters"):
            backend.find_job(bad)


def test_life_of_a_job(backend: StateStore) -> None:
    job_id = backend.add_job(new_job(num_rounds=3)).job_id
    with pytest.raises(JobError, match="cannot record progress while submitted"):
        backend.set_progress(job_id, 1)
    with pytest.raises(JobError, match="cannot go from submitted to finished:completed"):
        backend.finish_job(job_id, JobStatus.COMPLETED, "")
    started = backend.set_running(job_id)
    assert started.status is JobStatus.RUNNING and started.start_time is not None
    assert backend.set_running(job_id).resume_count == 1
    backend.set_progress(job_id, 2)
    for bad in (1, 4):
        with pytest.raises(JobError, match=f"current_round {bad} is outside 2..3"):
            backend.set_progress(job_id, bad)
    with pytest.raises(JobError, match="not a final one"):
        backend.finish_job(job_id, JobStatus.RUNNING, "")
    done = backend.finish_job(job_id, JobStatus.FAILED, "x" * (limits.MAX_ERROR_TEXT + 10))
    assert done.status is JobStatus.FAILED and len(done.reason) == limits.MAX_ERROR_TEXT and done.end_time
    assert backend.finish_job(job_id, JobStatus.COMPLETED, "") == done  # the first final status wins
    with pytest.raises(JobError, match="cannot go from finished:failed to running"):
        backend.set_running(job_id)
    with pytest.raises(JobError, match="while finished:failed"):
        backend.set_progress(job_id, 3)


def test_unfinished_oldest_first(backend: StateStore) -> None:
    a, b, c = (backend.add_job(new_job(n)).job_id for n in "abc")
    backend.set_running(b)
    backend.finish_job(a, JobStatus.ABORTED, "stop")
    assert [r.job_id for r in backend.unfinished_jobs()] == [b, c]


def test_concurrent_transitions_and_adds(backend: StateStore) -> None:
    job_id = running(backend, num_rounds=100)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            backend.add_job(new_job(f"j{n}"))
            backend.set_running(job_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert backend.get_job(job_id).resume_count == 8
    assert len(backend.list_jobs("j", "", 100)) == 8


def round_record(number: int, **changes: object) -> RoundRecord:
    fields: dict[str, object] = dict(
        number=number, kind=RoundKind.TRAIN, sampled=frozenset({"site-1", "site-2", "site-3"}),
        accepted=frozenset({"site-1"}), refused={"site-2": "update has NaN"}, failed=frozenset({"site-3"}),
        metrics={"loss": 0.5, "accuracy": 0.75},
    )  # fmt: skip
    fields.update(changes)
    return RoundRecord(**fields)  # type: ignore[arg-type]


def test_rounds_round_trip_replace_and_order(backend: StateStore) -> None:
    job_id = running(backend)
    assert backend.rounds(job_id) == []
    backend.put_round(job_id, round_record(1))
    backend.put_round(job_id, round_record(0, refused={}, failed=frozenset()))
    backend.put_round(job_id, round_record(1, kind=RoundKind.EVALUATE, metrics={"loss": 0.25}))
    got = backend.rounds(job_id)
    assert [r.number for r in got] == [0, 1]
    assert got[0].refused == {} and got[0].failed == frozenset() and got[0].time > 0
    assert got[1].kind is RoundKind.EVALUATE and got[1].metrics == {"loss": 0.25}
    assert got[1].sampled == frozenset({"site-1", "site-2", "site-3"}) and got[1].refused == {
        "site-2": "update has NaN"
    }


def test_round_bounds(backend: StateStore) -> None:
    job_id = running(backend)
    with pytest.raises(JobError, match="round number"):
        backend.put_round(job_id, round_record(-1))
    with pytest.raises(JobError, match="more than"):
        backend.put_round(job_id, round_record(0, metrics={f"m{i}": 1.0 for i in range(_sql.MAX_METRICS + 1)}))
    with pytest.raises(JobError, match="no such job"):
        backend.put_round(str(uuid.uuid4()), round_record(0))
    assert backend.rounds(job_id) == []


def test_refusals_are_kept_in_order_bounded_per_round_and_in_all(backend: StateStore) -> None:
    job_id = running(backend, num_rounds=100)
    assert backend.refusals(job_id) == []
    backend.put_refusal(job_id, Refusal(0, "site-2", "r" * (limits.MAX_REFUSAL_TEXT + 9)))
    backend.put_refusal(job_id, Refusal(0, "site-1", "shape (9, 1)"))
    got = backend.refusals(job_id)
    assert [(r.round, r.site) for r in got] == [(0, "site-2"), (0, "site-1")] and got[1].reason == "shape (9, 1)"
    assert len(got[0].reason) == limits.MAX_REFUSAL_TEXT and got[0].time > 0
    for n in range(limits.MAX_REFUSALS_PER_ROUND + 3):  # round 1: only the first MAX_REFUSALS_PER_ROUND stay
        backend.put_refusal(job_id, Refusal(1, f"site-{n}", f"bad {n}"))
    in_round_1 = [r.reason for r in backend.refusals(job_id) if r.round == 1]
    assert in_round_1 == [f"bad {n}" for n in range(limits.MAX_REFUSALS_PER_ROUND)]
    for number in range(2, 2 + limits.MAX_REFUSALS_KEPT):  # in all: the newest MAX_REFUSALS_KEPT stay
        backend.put_refusal(job_id, Refusal(number, "site-1", f"round {number}"))
    kept = backend.refusals(job_id)
    assert [r.round for r in kept] == list(range(2, 2 + limits.MAX_REFUSALS_KEPT))
    with pytest.raises(JobError, match="refusal round"):
        backend.put_refusal(job_id, Refusal(-1, "site-1", "x"))
    with pytest.raises(JobError, match="refusal site"):
        backend.put_refusal(job_id, Refusal(0, "", "x"))
    with pytest.raises(JobError, match="no such job"):
        backend.put_refusal(str(uuid.uuid4()), Refusal(0, "site-1", "x"))
    with pytest.raises(JobError, match="no such job"):
        backend.refusals(str(uuid.uuid4()))


def test_site_reports(backend: StateStore) -> None:
    job_id = running(backend)
    backend.put_site_report(job_id, SiteReport("site-2", SiteOutcome.FAILED, "boom", "log"))
    backend.put_site_report(job_id, SiteReport("site-1", SiteOutcome.FAILED, "e" * (limits.MAX_ERROR_TEXT + 5)))
    backend.put_site_report(job_id, SiteReport("site-2", SiteOutcome.FINISHED))
    got = backend.site_reports(job_id)
    assert [(r.site, r.outcome) for r in got] == [("site-1", SiteOutcome.FAILED), ("site-2", SiteOutcome.FINISHED)]
    assert len(got[0].error) == limits.MAX_ERROR_TEXT and got[1].error == "" and got[1].log_tail == ""


def test_participation(backend: StateStore) -> None:
    job_id = running(backend)
    assert backend.get_participation(job_id) == Participation()
    record = Participation(frozenset({"site-1", "site-2"}), {"site-2": 2, "site-1": 1}, {"site-2": "b", "site-1": "a"})
    backend.put_participation(job_id, record)
    got = backend.get_participation(job_id)
    assert got == record
    assert list(got.left) == ["site-2", "site-1"]  # in the order they left
    with pytest.raises(JobError, match="failures must be an integer"):
        backend.put_participation(job_id, Participation(failures={"site-1": -1}))


def test_results(backend: StateStore) -> None:
    job_id = running(backend)
    assert backend.get_result(job_id) is None
    kept = ResultMeta(ResultOutcome.FAILED, "site-1 left", f"jobs/{job_id}/result/global_model.fsa", 3, DIGEST, 1234)
    backend.put_result(job_id, kept)
    assert backend.get_result(job_id) == kept
    backend.put_result(job_id, ResultMeta(ResultOutcome.COMPLETED))
    assert backend.get_result(job_id) == ResultMeta(ResultOutcome.COMPLETED)


def test_delete_removes_everything_about_a_finished_job(backend: StateStore) -> None:
    job_id, other = running(backend), running(backend)
    for j in (job_id, other):
        backend.put_round(j, round_record(0))
        backend.put_refusal(j, Refusal(0, "site-2", "update has NaN"))
        backend.put_site_report(j, SiteReport("site-1", SiteOutcome.FINISHED))
        backend.put_participation(j, Participation(frozenset({"site-1"})))
        backend.put_result(j, ResultMeta(ResultOutcome.COMPLETED))
    with pytest.raises(JobError, match="cannot delete it while running"):
        backend.delete_job(job_id)
    backend.finish_job(job_id, JobStatus.COMPLETED, "")
    backend.delete_job(job_id)
    with pytest.raises(JobError, match="no such job"):
        backend.get_job(job_id)
    with pytest.raises(JobError, match="no such job"):
        backend.rounds(job_id)
    assert len(backend.rounds(other)) == 1 and backend.get_result(other) is not None
    backend.finish_job(other, JobStatus.COMPLETED, "")
    backend.add_job(new_job(job_id=job_id))  # nothing of the deleted job is left under its id
    assert backend.get_participation(job_id) == Participation() and backend.get_result(job_id) is None
    assert backend.refusals(job_id) == [] and len(backend.refusals(other)) == 1


def test_a_failing_before_commit_keeps_the_job(backend: StateStore) -> None:
    job_id = running(backend)
    backend.put_round(job_id, round_record(0))
    backend.finish_job(job_id, JobStatus.ABORTED, "")

    def fail() -> None:
        raise OSError("cannot move the folder")

    with pytest.raises(OSError, match="cannot move"):
        backend.delete_job(job_id, fail)
    assert backend.get_job(job_id).status is JobStatus.ABORTED and len(backend.rounds(job_id)) == 1


def test_audit_trail(backend: StateStore) -> None:
    for n in range(5):
        backend.append_audit(
            AuditEntry(100.0 + n, "admin@acme.org", "acme", "project_admin", f"cmd{n}", {"job": str(n)}, "allowed")
        )
    tail = backend.audit_tail(3)
    assert [e.command for e in tail] == ["cmd2", "cmd3", "cmd4"]
    assert tail[-1] == AuditEntry(104.0, "admin@acme.org", "acme", "project_admin", "cmd4", {"job": "4"}, "allowed")
    assert len(backend.audit_tail(100)) == 5


def test_a_closed_store_raises_store_unavailable(backend: StateStore) -> None:
    backend.close()
    with pytest.raises(StoreUnavailableError):
        backend.list_jobs("", "", 10)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_records_survive_reopening(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "sqlite":
        path = tmp_path / "jobs.db"

        def reopen() -> StateStore:
            return open_sqlite(path)
    else:
        server: pgserver.PgServer = request.getfixturevalue("pg")
        dsn = server.new_database()

        def reopen() -> StateStore:
            return open_postgres(dsn)

    first = reopen()
    job_id = running(first)
    first.put_round(job_id, round_record(0))
    first.close()
    second = reopen()
    try:
        assert second.get_job(job_id).status is JobStatus.RUNNING
        assert second.rounds(job_id)[0].accepted == frozenset({"site-1"})
        assert second.schema_version() == _sql.LATEST
    finally:
        second.close()


def test_text_from_sites_with_nul_characters_is_stored_on_every_backend(backend: StateStore) -> None:
    """Sites and job code choose errors, logs, metric names and refusal reasons: any text, NUL included."""
    job_id = running(backend)
    nul = "a\x00b"
    backend.put_site_report(job_id, SiteReport("site-1", SiteOutcome.FAILED, nul, nul))
    backend.put_round(
        job_id,
        RoundRecord(0, RoundKind.TRAIN, frozenset({"site-1"}), frozenset(), {"site-1": nul}, frozenset(), {nul: 1.0}),
    )
    backend.finish_job(job_id, JobStatus.FAILED, nul)
    report = backend.site_reports(job_id)[0]
    assert "\x00" not in report.error and report.error.startswith("a") and report.error.endswith("b")
    assert "\x00" not in report.log_tail
    (round_,) = backend.rounds(job_id)
    assert round_.refused["site-1"].startswith("a") and list(round_.metrics.values()) == [1.0]
    assert "\x00" not in backend.get_job(job_id).reason
