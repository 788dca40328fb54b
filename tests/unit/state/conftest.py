"""The `backend` fixture: each state contract test runs against SQLite and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsec.state.interface import StateStore
from fedsec.state.postgres import open_postgres
from fedsec.state.sqlite import open_sqlite
from tests import pgserver
from tests.unit.conftest import Clock


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    """A fresh, empty state store of each backend (postgres: a new database on the session's server)."""
    if request.param == "sqlite":
        state: StateStore = open_sqlite(tmp_path / "jobs.db", clock=clock)
    else:
        server: pgserver.PgServer = request.getfixturevalue("pg")
        state = open_postgres(server.new_database(), clock=clock)
    try:
        yield state
    finally:
        state.close()
