"""The embedded backend: the state in one SQLite file (WAL mode), the default, nothing to install.

The file is made 0600 before SQLite opens it. One connection per store, used from
several threads under a lock; every write is one IMMEDIATE transaction, so a second
process on the same file waits instead of interleaving. A store made by the first
fedsec (PRAGMA user_version = 1, no schema_version table) is taken as version 1 and
upgraded in place; PRAGMA user_version follows the schema version, so that older
fedsec refuses a newer file instead of misreading it. sqlite3 errors never escape:
they become StoreUnavailableError here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedsec.errors import JobError, StoreUnavailableError
from fedsec.state import _sql

DB_FILE = "jobs.db"
FIRST_STORE_VERSION = 1  # PRAGMA user_version of a store made before schema_version existed


class _Cursor:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._conn.execute(sql, _sql.params(params))]

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        self._conn.execute(sql, _sql.params(params))


class SqliteDatabase:
    """One SQLite file (see the module docstring)."""

    name = "sqlite"
    order_key = "rowid"
    schema_lock = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._where = f"job store {path.parent}"
        self._lock = threading.Lock()
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # never readable by others
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"{self._where}: cannot open {path.name}: {exc}") from exc
        try:
            with self._errors(f"cannot open {path.name}"):
                self._conn.execute("PRAGMA journal_mode=WAL")  # the first read: fails here if not a database
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"{self._where}: {what}: {exc}") from exc

    @contextmanager
    def _transaction(self, begin: str, what: str) -> Iterator[_sql.Cursor]:
        with self._lock, self._errors(what):
            self._conn.execute(begin)
            try:
                yield _Cursor(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # also when COMMIT itself failed
                    self._conn.execute("ROLLBACK")
                raise

    def write(self, what: str) -> Any:
        return self._transaction("BEGIN IMMEDIATE", what)

    def read(self, what: str) -> Any:
        return self._transaction("BEGIN", what)

    def set_user_version(self, version: int) -> None:
        with self._lock, self._errors("cannot record the schema version"):
            self._conn.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _current_version(db: SqliteDatabase) -> int:
    """The schema version of the file, making the schema_version table where it is missing."""
    with db.write(f"cannot open {DB_FILE}") as cur:
        tables = {row[0] for row in cur.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
        user_version = int(cur.rows("PRAGMA user_version")[0][0])
        recorded = 0
        if "schema_version" in tables:
            recorded = int(cur.rows("SELECT max(version) FROM schema_version")[0][0] or 0)
        if user_version > max(recorded, FIRST_STORE_VERSION):  # a newer fedsec keeps both in step
            raise JobError(
                f"{db._where}: schema version {user_version}, this fedsec reads versions up to {_sql.LATEST}"
            )
        if "schema_version" in tables:
            return recorded
        if user_version == FIRST_STORE_VERSION and "jobs" in tables:
            current = FIRST_STORE_VERSION  # made by the first fedsec: its jobs table is migration 1
        elif not tables and user_version == 0:
            current = 0
        else:
            raise JobError(f"{db._where}: not a fedsec job store (it holds other tables)")
        cur.run(_sql.SCHEMA_VERSION_TABLE)
        if current:
            cur.run(
                "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                (current, _sql.MIGRATIONS[0].description),
            )
        return current


def open_sqlite(path: Path, *, clock: Callable[[], float] = time.time) -> _sql.SqlState:
    """The state in the SQLite file at path, created if missing and upgraded to the latest schema.

    Raises StoreUnavailableError if the file cannot be opened or is not a database, and JobError if
    it is not a fedsec store or was written by a newer fedsec.
    """
    db = SqliteDatabase(path)
    try:
        version = _sql.migrate(db, _sql.SQLITE_TYPES, _current_version(db), db._where)
        db.set_user_version(version)
    except BaseException:
        db.close()
        raise
    return _sql.SqlState(db, clock, db._where, lease_clock=clock)  # one replica: its own clock
