"""What only the PostgreSQL backend does: reconnecting after its connection broke, a shared schema, no DSN in errors."""

from __future__ import annotations

import psycopg
import pytest

from fedsec.errors import JobError, StoreUnavailableError
from fedsec.state import _sql
from fedsec.state.postgres import open_postgres
from tests import pgserver
from tests.unit.state.test_contract import new_job


def test_a_broken_connection_is_opened_again_on_the_next_call(pg: pgserver.PgServer) -> None:
    dsn = pg.new_database()
    state = open_postgres(dsn)
    try:
        job = state.add_job(new_job())
        with psycopg.connect(dsn, autocommit=True) as admin:  # as a database restart would
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreUnavailableError, match=r"job store \(postgres\): cannot read job"):
            state.get_job(job.job_id)
        assert state.get_job(job.job_id) == job
    finally:
        state.close()


def test_two_processes_share_one_database(pg: pgserver.PgServer) -> None:
    dsn = pg.new_database()
    first, second = open_postgres(dsn), open_postgres(dsn)  # the second finds the schema made
    try:
        job = first.add_job(new_job())
        second.set_running(job.job_id)
        assert first.get_job(job.job_id).status.value == "running"
        with pytest.raises(JobError, match="exists already"):
            second.add_job(new_job(job_id=job.job_id))
        with psycopg.connect(dsn) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, _sql.LATEST + 1))
    finally:
        first.close()
        second.close()


def test_a_database_holding_another_jobs_table_is_refused(pg: pgserver.PgServer) -> None:
    dsn = pg.new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id INT)")
    with pytest.raises(JobError, match="not a fedsec store"):
        open_postgres(dsn)


def test_an_unreachable_server_names_no_password(pg: pgserver.PgServer) -> None:
    dsn = pg.dsn("nosuchdb")
    with pytest.raises(StoreUnavailableError, match="cannot connect") as err:
        open_postgres(dsn)
    assert pg.password not in str(err.value) and "password=" not in str(err.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://fedsec:S3cretPW99@[bad/fedsec",  # libpq quotes the whole URI
        "host=127.0.0.1 port=1 password=S3cretPW99 dbname",  # libpq quotes the word after the last '='
        "host=127.0.0.1 port=notaport password=S3cretPW99",
        "postgresql://fedsec:S3cretPW99@127.0.0.1:1/x?sslmode=S3cretPW99",
    ],
)
def test_a_malformed_dsn_is_never_quoted_in_the_error(dsn: str) -> None:
    with pytest.raises(StoreUnavailableError, match="cannot connect") as err:
        open_postgres(dsn)
    assert "S3cretPW99" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no traceback shows psycopg's text
