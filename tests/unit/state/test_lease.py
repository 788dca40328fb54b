"""The server lease's contract on every backend: two replicas contend, expiry, renewal, fencing."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsec.errors import JobError, LeaseLostError
from fedsec.state.interface import StateStore
from fedsec.state.postgres import open_postgres
from fedsec.state.records import (
    JobStatus,
    Lease,
    NewJob,
    Refusal,
    ResultMeta,
    ResultOutcome,
    RoundKind,
    RoundRecord,
)
from fedsec.state.sqlite import open_sqlite
from tests import pgserver

TTL = 10.0


class ManualClock:
    """A clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manual() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["sqlite", "postgres"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, manual: ManualClock
) -> Iterator[tuple[StateStore, StateStore]]:
    """Two stores on one database, as two replicas have them, on one clock."""
    if request.param == "sqlite":
        a: StateStore = open_sqlite(tmp_path / "jobs.db", clock=manual)
        b: StateStore = open_sqlite(tmp_path / "jobs.db", clock=manual)
    else:
        server: pgserver.PgServer = request.getfixturevalue("pg")
        dsn = server.new_database()
        a = open_postgres(dsn, clock=manual, lease_clock=manual)
        b = open_postgres(dsn, clock=manual, lease_clock=manual)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _job(state: StateStore) -> str:
    job = NewJob(
        job_id=str(uuid.uuid4()), name="mnist", submitter="admin@acme.org", submitter_org="acme",
        submitter_role="project_admin", meta_json=json.dumps({"name": "mnist"}), num_rounds=5,
        archive_sha256=hashlib.sha256(b"x").digest(),
    )  # fmt: skip
    return state.add_job(job).job_id


def test_a_fresh_store_has_no_holder_and_the_first_acquirer_gets_token_1(pair: tuple[StateStore, StateStore]) -> None:
    a, _ = pair
    assert a.get_lease() is None
    lease = a.acquire_lease("replica-a", TTL)
    assert lease == Lease("replica-a", 1, 1000.0 + TTL, 1000.0)
    assert a.get_lease() == lease


def test_two_holders_contend_and_only_one_wins(pair: tuple[StateStore, StateStore], manual: ManualClock) -> None:
    a, b = pair
    won = a.acquire_lease("replica-a", TTL)
    assert won is not None
    assert b.acquire_lease("replica-b", TTL) is None
    manual.now += TTL - 0.5
    assert b.acquire_lease("replica-b", TTL) is None  # not lapsed yet
    held = b.get_lease()
    assert held is not None and held.holder == "replica-a"


def test_on_postgres_the_lease_goes_by_the_database_clock_not_the_replicas(pg: pgserver.PgServer) -> None:
    """A replica whose clock is an hour ahead must not judge a live lease lapsed and take it."""
    dsn = pg.new_database()
    ahead = open_postgres(dsn, clock=lambda: time.time() + 3600)
    on_time = open_postgres(dsn)
    try:
        lease = on_time.acquire_lease("replica-a", TTL)
        assert lease is not None
        assert ahead.acquire_lease("replica-b", TTL) is None  # held: the database's clock says so
        assert abs(ahead.lease_clock() - on_time.lease_clock()) < 60  # both read the one clock
        held = ahead.get_lease()
        assert held is not None and held.holder == "replica-a" and held.deadline > ahead.lease_clock()
        assert on_time.renew_lease(lease, TTL).fencing_token == lease.fencing_token
    finally:
        ahead.close()
        on_time.close()


def test_contending_threads_get_one_lease(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    results: list[Lease | None] = []
    barrier = threading.Barrier(2)

    def take(state: StateStore, name: str) -> None:
        barrier.wait()
        results.append(state.acquire_lease(name, TTL))

    threads = [threading.Thread(target=take, args=(s, n)) for s, n in ((a, "replica-a"), (b, "replica-b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].fencing_token == 1


def test_a_lapsed_lease_goes_to_the_next_with_a_greater_token(
    pair: tuple[StateStore, StateStore], manual: ManualClock
) -> None:
    a, b = pair
    first = a.acquire_lease("replica-a", TTL)
    assert first is not None
    manual.now += TTL
    second = b.acquire_lease("replica-b", TTL)
    assert second is not None and second.holder == "replica-b"
    assert second.fencing_token == first.fencing_token + 1
    assert second.acquired == manual.now


def test_renewal_extends_the_deadline_and_keeps_token_and_age(
    pair: tuple[StateStore, StateStore], manual: ManualClock
) -> None:
    a, b = pair
    lease = a.acquire_lease("replica-a", TTL)
    assert lease is not None
    for _ in range(5):  # renewing every ttl/2 keeps it far past its first deadline
        manual.now += TTL / 2
        lease = a.renew_lease(lease, TTL)
        assert b.acquire_lease("replica-b", TTL) is None
    assert lease.fencing_token == 1 and lease.acquired == 1000.0 and lease.deadline == manual.now + TTL


def test_a_stale_holder_cannot_renew_after_another_took_it(
    pair: tuple[StateStore, StateStore], manual: ManualClock
) -> None:
    a, b = pair
    old = a.acquire_lease("replica-a", TTL)
    assert old is not None
    manual.now += TTL + 1
    new = b.acquire_lease("replica-b", TTL)
    assert new is not None
    with pytest.raises(LeaseLostError, match="replica-a cannot renew the server lease: replica-b holds it"):
        a.renew_lease(old, TTL)
    assert a.get_lease() == new


def test_a_lapsed_lease_cannot_be_renewed_even_when_nobody_took_it(
    pair: tuple[StateStore, StateStore], manual: ManualClock
) -> None:
    a, _ = pair
    lease = a.acquire_lease("replica-a", TTL)
    assert lease is not None
    manual.now += TTL + 2
    with pytest.raises(LeaseLostError, match="lapsed 2.0 s ago"):
        a.renew_lease(lease, TTL)


def test_release_frees_it_and_the_token_still_grows(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    first = a.acquire_lease("replica-a", TTL)
    assert first is not None
    a.release_lease(first)
    assert a.get_lease() is None
    second = b.acquire_lease("replica-b", TTL)
    assert second is not None and second.fencing_token == 2
    a.release_lease(first)  # no longer a's: releasing it again changes nothing
    assert a.get_lease() == second


def test_writes_fenced_by_a_lost_lease_change_nothing(pair: tuple[StateStore, StateStore], manual: ManualClock) -> None:
    a, b = pair
    job_id = _job(a)
    old = a.acquire_lease("replica-a", TTL)
    assert old is not None
    a.set_running(job_id, fence=old)
    a.set_progress(job_id, 1, fence=old)
    manual.now += TTL + 1
    new = b.acquire_lease("replica-b", TTL)
    assert new is not None
    round_ = RoundRecord(1, RoundKind.TRAIN, frozenset({"s1"}), frozenset({"s1"}), {}, frozenset(), {}, 0.0)
    with pytest.raises(LeaseLostError, match="replica replica-a lost the server lease"):
        a.set_progress(job_id, 2, fence=old)
    with pytest.raises(LeaseLostError):
        a.set_running(job_id, fence=old)
    with pytest.raises(LeaseLostError):
        a.finish_job(job_id, JobStatus.FAILED, "stale", fence=old)
    with pytest.raises(LeaseLostError):
        a.put_round(job_id, round_, fence=old)
    with pytest.raises(LeaseLostError):
        a.put_result(job_id, ResultMeta(ResultOutcome.FAILED), fence=old)
    with pytest.raises(LeaseLostError):
        a.put_refusal(job_id, Refusal(1, "s1", "stale"), fence=old)
    record = b.get_job(job_id)
    assert record.status is JobStatus.RUNNING and record.current_round == 1 and record.resume_count == 0
    assert b.rounds(job_id) == [] and b.get_result(job_id) is None and b.refusals(job_id) == []
    # the new holder's writes go through
    b.set_running(job_id, fence=new)
    b.set_progress(job_id, 2, fence=new)
    b.put_round(job_id, round_, fence=new)
    b.put_refusal(job_id, Refusal(1, "s1", "fresh"), fence=new)
    assert [r.reason for r in b.refusals(job_id)] == ["fresh"]
    assert b.finish_job(job_id, JobStatus.COMPLETED, "", fence=new).status is JobStatus.COMPLETED


@pytest.mark.parametrize("ttl", [0, -1, 3601, float("nan"), True])
def test_a_bad_ttl_or_holder_is_refused(pair: tuple[StateStore, StateStore], ttl: float) -> None:
    a, _ = pair
    with pytest.raises(JobError, match="lease ttl"):
        a.acquire_lease("replica-a", ttl)
    with pytest.raises(JobError, match="lease holder"):
        a.acquire_lease("", TTL)
