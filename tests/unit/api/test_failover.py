"""An admin Session over a server of several replicas: it names every endpoint it tried when none answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.api import Session
from fedsec.errors import UnreachableError
from tests.standby import StandbyReplica
from tests.unit.transport.test_failover import replica_project


def test_no_replica_answers_names_every_endpoint_in_order(tmp_path: Path) -> None:
    prod = replica_project(tmp_path)
    moves: list[tuple[str, str]] = []
    with StandbyReplica(prod / "server1-a") as standby, Session(prod / "admin@acme.org", timeout=10) as session:
        first = session.server_address
        session.on_failover = lambda left, now: moves.append((left, now))
        with pytest.raises(UnreachableError) as info:
            session.login()
        assert session.server_address == first  # the next call starts again at the first endpoint
    assert standby.calls == ["/fedsec.v1.Admin/GetChallenge"]
    assert len(moves) == 1 and moves[0][0] == first
    second = moves[0][1]
    assert second != first
    assert str(info.value) == (
        f"cannot reach the server at any of its endpoints: {first}, {second} "
        "(is the active replica running? see its log.txt)"
    )


def test_waiting_for_the_server_goes_round_the_endpoints_again_instead_of_waiting_on_one(tmp_path: Path) -> None:
    # a standby on the first endpoint, nothing on the second: a caller that waits for the server (monitor_job)
    # tries both, pauses, and tries them again until its timeout; it never waits on one endpoint alone
    prod = replica_project(tmp_path)
    with StandbyReplica(prod / "server1-a") as standby, Session(prod / "admin@acme.org", timeout=3) as session:
        with pytest.raises(UnreachableError, match="any of its endpoints"):
            session.login(wait_for_server=True)
    assert len(standby.calls) >= 2  # asked again after a round, not once
    assert set(standby.calls) == {"/fedsec.v1.Admin/GetChallenge"}
