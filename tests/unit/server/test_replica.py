"""A replica's hold on the server lease: taking it, renewing it, stepping down when it cannot, releasing it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedsec.errors import LeaseLostError, StoreUnavailableError
from fedsec.server.replica import Replica
from fedsec.server.store import JobStore
from fedsec.state._sql import SqlState
from fedsec.state.records import JobStatus, Lease
from fedsec.state.sqlite import open_sqlite
from tests.integration.harness import wait_until
from tests.unit.state.test_lease import ManualClock

TTL = 1.0  # seconds: renewals every 1/3 s
PATIENCE = 30.0  # the most a test waits for what must happen


@pytest.fixture
def manual() -> ManualClock:
    return ManualClock()


@pytest.fixture
def states(tmp_path: Path, manual: ManualClock) -> Iterator[tuple[SqlState, SqlState]]:
    a, b = open_sqlite(tmp_path / "jobs.db", clock=manual), open_sqlite(tmp_path / "jobs.db", clock=manual)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Lost:
    """An on_lost callback that records why."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reasons: list[str] = []

    def __call__(self, why: str) -> None:
        self.reasons.append(why)
        self.event.set()


def _deadline(state: SqlState) -> float:
    lease = state.get_lease()
    return lease.deadline if lease is not None else 0.0


def _wait(cond: Callable[[], bool]) -> bool:
    """Whether cond holds within PATIENCE seconds."""
    try:
        wait_until(cond, PATIENCE, "the condition", interval=0.05)
    except AssertionError:
        return False
    return True


class Unreachable(SqlState):
    """A state whose renewals never reach the database (it went away)."""

    def __init__(self, inner: SqlState) -> None:
        self.__dict__.update(inner.__dict__)

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        raise StoreUnavailableError("job store (postgres): cannot renew the server lease: connection refused")


def test_the_first_replica_is_active_and_the_second_stands_by(states: tuple[SqlState, SqlState]) -> None:
    a, b = Replica(states[0], "server1@h:1", TTL), Replica(states[1], "server1@h:2", TTL)
    stop = threading.Event()
    assert a.wait_active(stop) and a.lease() is not None
    assert b.try_acquire() is None and b.lease() is None
    assert b.active_holder() == "server1@h:1"
    status = b.status()
    assert status["replica"] == "server1@h:2" and status["active_replica"] == "server1@h:1"
    stop.set()
    assert not b.wait_active(stop)  # a stop ends the wait


def test_renewals_keep_it_past_its_first_deadline_and_a_stale_holder_steps_down(
    states: tuple[SqlState, SqlState], manual: ManualClock
) -> None:
    a, b = Replica(states[0], "server1@h:1", TTL), Replica(states[1], "server1@h:2", TTL)
    assert a.try_acquire() is not None
    first = states[1].get_lease()
    on_lost = Lost()
    lost, reasons = on_lost.event, on_lost.reasons
    a.keep(on_lost)
    try:
        assert first is not None
        for _ in range(3):  # the store's clock moves 0.9 ttl at a time: only renewals keep the lease
            manual.now += 0.9 * TTL
            at = manual.now
            assert _wait(lambda: _deadline(states[1]) > at + 0.5 * TTL), "no renewal"  # noqa: B023 - waited here
            assert b.try_acquire() is None
        renewed = states[1].get_lease()
        assert renewed is not None and renewed.fencing_token == first.fencing_token and renewed.holder == "server1@h:1"
        assert not lost.is_set()
        manual.now += 10 * TTL  # the store's clock: the lease lapses, and the other replica takes it
        taken = b.try_acquire()
        assert taken is not None and taken.fencing_token == first.fencing_token + 1
        assert lost.wait(PATIENCE)
        assert a.lease() is None and len(reasons) == 1
        assert "server1@h:2 holds it now" in reasons[0] or "lapsed" in reasons[0]
    finally:
        a.step_down()


def test_a_replica_that_cannot_reach_the_store_steps_down_at_its_deadline(states: tuple[SqlState, SqlState]) -> None:
    a = Replica(Unreachable(states[0]), "server1@h:1", TTL)
    assert a.try_acquire() is not None
    on_lost = Lost()
    lost, reasons = on_lost.event, on_lost.reasons
    a.keep(on_lost)
    try:
        assert lost.wait(PATIENCE)
        assert reasons == ["the lease could not be renewed in time (token 1)"]
        assert a.lease() is None
    finally:
        a.step_down()


def test_release_lets_the_standby_take_it_at_once(states: tuple[SqlState, SqlState]) -> None:
    a, b = Replica(states[0], "server1@h:1", TTL), Replica(states[1], "server1@h:2", TTL)
    assert a.try_acquire() is not None
    a.keep(lambda why: None)
    a.release()
    assert a.lease() is None
    taken = b.try_acquire()
    assert taken is not None and taken.fencing_token == 2


def test_the_same_replica_started_again_takes_its_own_lease_back(states: tuple[SqlState, SqlState]) -> None:
    first = Replica(states[0], "server1@h:1", TTL).try_acquire()
    again = Replica(states[1], "server1@h:1", TTL).try_acquire()  # killed and restarted: same host and port
    assert first is not None and again is not None and again.fencing_token == first.fencing_token + 1


def test_a_job_store_without_the_lease_changes_no_job(tmp_path: Path, states: tuple[SqlState, SqlState]) -> None:
    store = JobStore(tmp_path / "store", state=states[0])
    replica = Replica(states[0], "server1@h:1", TTL)
    store.fence = replica.lease
    job = store.add(name="j", submitter="a@b.org", submitter_org="b", submitter_role="r", meta_json="{}", num_rounds=2)
    with pytest.raises(LeaseLostError, match="this replica does not hold the server lease"):
        store.set_running(job.job_id)
    assert replica.try_acquire() is not None
    assert store.set_running(job.job_id).status is JobStatus.RUNNING
    store.set_progress(job.job_id, 1)
    assert store.finish(job.job_id, JobStatus.COMPLETED).status is JobStatus.COMPLETED
