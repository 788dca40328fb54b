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
