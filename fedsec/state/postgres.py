"""The PostgreSQL backend (psycopg 3): the state in a database that several server replicas can share.

One connection per store, used from several threads under a lock; each call is one
transaction, and the transitions of a job lock its row (SELECT ... FOR UPDATE), so
two processes on one database never interleave a job's changes. A connection that
broke (the database restarted) is opened again on the next call; the call that saw
it break raises StoreUnavailableError. Schema changes are serialised between
processes by a transaction-scoped advisory lock. The DSN, which may hold a
password, is never logged or put in an error. psycopg errors never escape: they
become StoreUnavailableError here. psycopg is imported only here (the postgres extra).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fedsec import _deps
from fedsec.errors import JobError, StoreUnavailableError
from fedsec.state import _sql

if TYPE_CHECKING:
    import psycopg

SCHEMA_LOCK_KEY = 0x66656473_65630001  # "fedsec" + 1: the advisory lock held while the schema changes
CONNECT_TIMEOUT_SECONDS = 10


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise _deps.missing("psycopg", exc) from exc
    return psycopg


class _Cursor:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(sql.replace("?", "%s"), _sql.params(params))
        return [tuple(row) for row in self._cur.fetchall()]

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        self._cur.execute(sql.replace("?", "%s"), _sql.params(params))


class PostgresDatabase:
    """A connection to one PostgreSQL database (see the module docstring)."""

    name = "postgres"
    order_key = "seq"
    schema_lock = f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})"

    def __init__(self, dsn: str, where: str) -> None:
        self._psycopg = _psycopg()
        self._dsn = dsn
        self._where = where
        self._lock = threading.Lock()
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        return f"PostgresDatabase({self._where!r})"  # never the DSN

    def _connect(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreUnavailableError(f"{self._where}: the store is closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        try:
            self._conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except self._psycopg.Error as exc:
            raise StoreUnavailableError(f"{self._where}: cannot connect: {self._safe(exc)}") from None
        assert self._conn is not None
        return self._conn

    @contextmanager
    def _transaction(self, what: str) -> Iterator[_sql.Cursor]:
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield _Cursor(cur)
            except self._psycopg.errors.UniqueViolation as exc:
                raise JobError(f"{self._where}: {what}: it exists already") from exc
            except (self._psycopg.DataError, self._psycopg.IntegrityError, self._psycopg.ProgrammingError) as exc:
                # a value or statement the database refuses: the same on every try, never "unavailable, retry"
                raise JobError(f"{self._where}: {what}: {self._safe(exc)}") from None
            except self._psycopg.Error as exc:
                raise StoreUnavailableError(f"{self._where}: {what}: {self._safe(exc)}") from None

    def _safe(self, exc: BaseException) -> str:
        """exc's first line without the DSN or any part of it (libpq quotes a malformed DSN's text)."""
        return redact_dsn(_first_line(exc), self._dsn, self._psycopg)

    def write(self, what: str) -> Any:
        return self._transaction(what)

    def read(self, what: str) -> Any:
        return self._transaction(what)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()


def redact_dsn(text: str, dsn: str, psycopg_module: Any) -> str:
    """text with the DSN's password and the DSN itself replaced by '***'.

    A DSN libpq cannot parse has no password to look for, and libpq names the part it could not parse
    ('missing "=" after "..."', 'in URI: "..."'), which may hold the password: then every quoted piece
    of the DSN goes too.
    """
    try:
        password = psycopg_module.conninfo.conninfo_to_dict(dsn).get("password")
    except (psycopg_module.Error, ValueError):

        def quoted(match: re.Match[str]) -> str:
            return '"***"' if match.group(1) and match.group(1) in dsn else match.group(0)

        return re.sub(r'"([^"]*)"', quoted, text.replace(dsn, "***"))
    text = text.replace(dsn, "***")
    return text.replace(password, "***") if isinstance(password, str) and password else text


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _current_version(db: PostgresDatabase) -> int:
    with db.write("cannot open the schema") as cur:
        cur.rows(db.schema_lock)
        tables = {row[0] for row in cur.rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        if "schema_version" not in tables:
            if "jobs" in tables:
                raise JobError(f"{db._where}: not a fedsec store (it holds a jobs table but no schema_version)")
            cur.run(_sql.SCHEMA_VERSION_TABLE)
            return 0
        return int(cur.rows("SELECT max(version) FROM schema_version")[0][0] or 0)


_NOW_SQL = "SELECT extract(epoch FROM clock_timestamp())::double precision"  # the lease's clock


def open_postgres(
    dsn: str,
    *,
    where: str = "job store (postgres)",
    clock: Callable[[], float] = time.time,
    lease_clock: Callable[[], float] | None = None,
) -> _sql.SqlState:
    """The state in the PostgreSQL database of dsn, its schema made or upgraded to the latest.

    clock stamps the records; the server lease goes by PostgreSQL's clock (lease_clock: another one, for tests),
    so replicas whose clocks differ agree on when it lapses.

    Raises DependencyError without psycopg, StoreUnavailableError if the database cannot be
    reached, and JobError if it holds something else or was written by a newer fedsec.
    """
    db = PostgresDatabase(dsn, where)
    try:
        _sql.migrate(db, _sql.POSTGRES_TYPES, _current_version(db), where)
    except BaseException:
        db.close()
        raise
    return _sql.SqlState(db, clock, where, lease_clock=lease_clock, now_sql=_NOW_SQL)
