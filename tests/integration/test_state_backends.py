"""The server's state backends end to end: a job on a server whose store is a real PostgreSQL, and a
SQLite store made by the first fedsec opened by today's server."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psycopg
import pytest

from fedsec.api import Session
from tests import pgserver
from tests.integration.harness import Federation, wait_until
from tests.integration.test_runtime import linear_job
from tests.unit.state.test_migrations import OLD_JOBS, make_first_store

POSTGRES_STORE = {"postgres": {"dsn_file": "local/postgres.dsn"}}


@pytest.mark.federation(server_store=POSTGRES_STORE)
def test_a_job_on_a_server_whose_store_is_postgres(
    federation: Federation, tmp_path: Path, pg: pgserver.PgServer
) -> None:
    dsn = pg.new_database()
    federation.set_postgres_dsn(dsn)
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, rounds=2, min_clients=3))
        info = s.wait_for_job(job_id, timeout=120)
        assert info.status == "finished:completed", info.reason
        assert [j.job_id for j in s.list_jobs()] == [job_id]
        meta = s.get_job_meta(job_id)
        assert (meta.status, meta.current_round, meta.num_rounds) == ("finished:completed", 2, 2)
    assert "state backend=postgres" in federation.log("server1")
    assert not (federation.kit("server1") / "store" / "jobs.db").exists()  # the records are not in SQLite
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status, current_round, archive_sha256 FROM jobs WHERE job_id = %s", (job_id,))
        status, current_round, digest = row.fetchone()  # type: ignore[misc]
        assert (status, current_round, len(digest)) == ("finished:completed", 2, 32)
        rounds = conn.execute("SELECT number, kind, accepted FROM rounds WHERE job_id = %s ORDER BY number", (job_id,))
        assert [(n, k, json.loads(a)) for n, k, a in rounds.fetchall()] == [
            (0, "train", ["site-1", "site-2", "site-3"]),
            (1, "train", ["site-1", "site-2", "site-3"]),
            (2, "evaluate", ["site-1", "site-2", "site-3"]),
        ]
        reports = conn.execute("SELECT site, outcome FROM site_reports WHERE job_id = %s ORDER BY site", (job_id,))
        assert reports.fetchall() == [(f"site-{i}", "finished") for i in (1, 2, 3)]
        audit = conn.execute("SELECT command, outcome FROM audit WHERE command = 'submit_job'").fetchall()
        assert audit == [("submit_job", "allowed")]
        result = conn.execute("SELECT outcome, model_round FROM results WHERE job_id = %s", (job_id,)).fetchone()
        assert result == ("completed", 1)
    federation.kill("server1", signal.SIGTERM)  # a restarted server reads its jobs back from PostgreSQL
    federation.start("server1")
    with Session(federation.admin_kit) as s:
        assert s.get_job_meta(job_id).status == "finished:completed"
        assert [e["command"] for e in s.show_audit(50)].count("submit_job") == 1


@pytest.mark.federation(server_store=POSTGRES_STORE, n_clients=1)
def test_a_dsn_file_others_can_read_stops_the_server(federation: Federation, pg: pgserver.PgServer) -> None:
    federation.set_postgres_dsn(pg.new_database(), mode=0o644)
    proc = federation.start("server1")
    assert proc.wait(timeout=60) != 0
    assert "local/postgres.dsn (the store's PostgreSQL DSN): mode 0644 lets others read or change it" in (
        federation.log("server1")
    )
    assert pg.password not in federation.log("server1")


@pytest.mark.federation(n_clients=1)
def test_a_first_fedsec_store_opens_in_todays_server(federation: Federation) -> None:
    make_first_store(federation.kit("server1") / "store")
    federation.start("server1")
    with Session(federation.admin_kit) as s:
        assert [j.job_id for j in s.list_jobs()] == [j[0] for j in OLD_JOBS][::-1]
        assert s.get_job_meta(OLD_JOBS[0][0]).status == "finished:completed"
        # the old running job's files are not there: the scheduler fails it, as it would have before
        wait_until(lambda: s.get_job_meta(OLD_JOBS[1][0]).status == "finished:failed", 30, "the incomplete job to fail")
