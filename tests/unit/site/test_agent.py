"""SiteAgent registration while its server does not answer yet: quick retries on a fresh connection, then backoff."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsec.kit import load_kit
from fedsec.provision import load_project, provision
from fedsec.site import agent as agent_module
from fedsec.site.agent import QUICK_RETRY_SECONDS, STANDBY_RETRY_SECONDS, SiteAgent
from tests.conftest import BASE_PROJECT, project_doc, write_project
from tests.standby import StandbyReplica
from tests.unit.transport.test_failover import replica_project


class Refuser:
    """A TCP port on 127.0.0.1 that accepts each connection and closes it at once, counting them.

    To a site it is a server that does not answer (the TLS handshake fails: UNAVAILABLE),
    and the count says how many times the site really dialed.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.dialed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.dialed += 1  # counted before the close the site's call fails on
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=10)


class Pauses(threading.Event):
    """The agent's stop event: records each pause instead of waiting, and is set after `limit` of them."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.seen: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.seen.append(timeout)
        if len(self.seen) >= self.limit:
            self.set()
        return self.is_set()


@pytest.fixture
def refuser() -> Iterator[Refuser]:
    r = Refuser()
    yield r
    r.close()


def _agent(tmp_path: Path, port: int) -> SiteAgent:
    parts = [dict(p) for p in BASE_PROJECT["participants"]]
    parts[0].update(host_names=["127.0.0.1"], fl_port=port)
    prod = provision(load_project(write_project(tmp_path / "p.yml", project_doc(participants=parts))), tmp_path / "ws")
    return SiteAgent(load_kit(prod.prod_dir / "site-1"))


def test_a_site_dials_a_server_that_does_not_answer_yet_every_tenth_of_a_second(
    tmp_path: Path, refuser: Refuser
) -> None:
    agent = _agent(tmp_path, refuser.port)
    stop = Pauses(limit=6)
    agent._stop = stop
    try:
        agent._register()
    finally:
        agent.stop()
    assert stop.seen == [QUICK_RETRY_SECONDS] * 6  # not a backoff growing from 0.2 s
    assert refuser.dialed == 6  # every attempt dialed: none failed at once inside gRPC's own reconnect backoff


def test_after_the_quick_phase_a_site_backs_off_and_still_dials_each_time(
    tmp_path: Path, refuser: Refuser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "QUICK_RETRY_PHASE", 0.0)
    agent = _agent(tmp_path, refuser.port)
    stop = Pauses(limit=5)
    agent._stop = stop
    try:
        agent._register()
    finally:
        agent.stop()
    assert stop.seen == [0.2, 0.4, 0.8, 1.6, 3.2]
    assert refuser.dialed == 5


def test_stop_while_the_main_thread_holds_the_connection_lock_closes_it_without_hanging(
    tmp_path: Path, refuser: Refuser
) -> None:
    """A SIGTERM handler runs on the main thread, which may be opening or renewing a channel under the lock."""
    agent = _agent(tmp_path, refuser.port)
    connection = agent._server
    connection.live()
    returned = threading.Event()

    def main_thread_in_the_lock() -> None:
        with connection._lock:
            agent.stop()  # what the handler calls
        returned.set()

    threading.Thread(target=main_thread_in_the_lock, daemon=True).start()
    assert returned.wait(60), "stop() waited for the lock its own thread holds"  # a bound for a hang, not a speed
    for thread in [t for t in threading.enumerate() if t.name == "close"]:
        thread.join(60)
    assert connection._closed


def test_while_a_standby_replica_answers_a_site_goes_round_every_half_second_without_backing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active replica is gone (nothing listens at server1-b) and server1-a stands by until the lease lapses:
    the site must be there soon after the takeover, not in a pause that grew to seconds."""
    monkeypatch.setattr(agent_module, "QUICK_RETRY_PHASE", 0.0)
    prod = replica_project(tmp_path)
    agent = SiteAgent(load_kit(prod / "site-1"))
    stop = Pauses(limit=5)
    agent._stop = stop
    try:
        with StandbyReplica(prod / "server1-a") as standby:
            agent._register()
    finally:
        agent.stop()
    assert stop.seen == [STANDBY_RETRY_SECONDS] * 5  # not 0.2, 0.4, 0.8, 1.6, 3.2
    assert standby.calls.count("/fedsec.v1.Federation/Register") >= 5  # it asked the standby each time round
