"""Which state backend a server uses: its kit's `store` setting, and the DSN file it names.

The setting is part of the server's project settings (project.yml's server entry,
copied into the signed startup/fed_server.json) and holds no secret::

    store: sqlite                                      # the default: <server kit>/store/jobs.db
    store: {postgres: {dsn_file: local/postgres.dsn}}  # a PostgreSQL database

The DSN ("postgresql://fedsec:PASSWORD@db.example.org/fedsec", or key=value words)
may hold a password, so it lives in its own file in the kit's local/ folder: a
regular file owned by the user that runs the server, mode 0600 (anything readable
by group or others is refused, naming the file). open_state() is the one place a
backend is picked by name. This module never logs a DSN.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fedsec import _fs, _schema
from fedsec.errors import ConfigError
from fedsec.state.interface import StateStore

SQLITE = "sqlite"
POSTGRES = "postgres"
BACKENDS = (SQLITE, POSTGRES)
STORE_DIR = "store"  # in the server kit: jobs.db (sqlite) and the blob folder
MAX_DSN_BYTES = 4096


@dataclass(frozen=True)
class _PostgresEntry:
    dsn_file: str


@dataclass(frozen=True)
class _Mapping:
    sqlite: dict[str, Any] | None = None
    postgres: _PostgresEntry | None = None


@dataclass(frozen=True)
class StoreSettings:
    """A checked `store` setting: the backend's short name, and for postgres the DSN file (kit-relative)."""

    backend: str = SQLITE
    dsn_file: str = ""

    def to_json(self) -> str | dict[str, Any]:
        """The setting as fed_server.json holds it (what parse_store reads back)."""
        if self.backend == SQLITE:
            return SQLITE
        return {POSTGRES: {"dsn_file": self.dsn_file}}


def parse_store(raw: Any, where: str) -> StoreSettings:
    """StoreSettings from a `store` value (None: the default); ConfigError naming where and the problem."""
    if raw is None or raw == SQLITE:
        return StoreSettings()
    if isinstance(raw, str):
        raise ConfigError(f"{where}: {raw[:40]!r} is not a store; use one of: {', '.join(BACKENDS)}")
    doc = _schema.build(_Mapping, raw, where)
    if (doc.sqlite is None) == (doc.postgres is None):
        raise ConfigError(f"{where}: name exactly one store: sqlite, or postgres: {{dsn_file: local/FILE}}")
    if doc.sqlite is not None:
        if doc.sqlite:
            raise ConfigError(f"{where}.sqlite: takes no settings")
        return StoreSettings()
    assert doc.postgres is not None
    path = PurePosixPath(doc.postgres.dsn_file)
    if path.is_absolute() or len(path.parts) != 2 or path.parts[0] != "local" or ".." in path.parts:
        raise ConfigError(
            f"{where}.postgres.dsn_file: must name a file in the kit's local/ folder, like local/postgres.dsn"
        )
    _fs.check_name("DSN file", path.name)
    return StoreSettings(POSTGRES, str(path))


def read_dsn(kit_root: Path, settings: StoreSettings) -> str:
    """The DSN in the kit's DSN file; ConfigError if it is missing, unsafe to trust, empty or too long."""
    path = kit_root / settings.dsn_file
    where = f"server kit: {settings.dsn_file} (the store's PostgreSQL DSN)"
    if not _fs.check_operator_file(path, where, others_may_read=False):
        raise ConfigError(f"{where}: missing; write the DSN there, mode 0600")
    try:
        text = _fs.read_bounded(path, MAX_DSN_BYTES, where).decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    if not text or "\n" in text:
        raise ConfigError(f"{where}: must hold one line, the DSN")
    return text


def open_state(kit_root: Path, settings: StoreSettings, *, clock: Callable[[], float] = time.time) -> StateStore:
    """The server's state as settings say: the one place a backend is picked by name.

    Raises ConfigError for a bad DSN file, DependencyError without psycopg, and
    StoreUnavailableError / JobError when the backend cannot be opened.
    """
    if settings.backend == POSTGRES:
        from fedsec.state.postgres import open_postgres

        return open_postgres(read_dsn(kit_root, settings), clock=clock)
    from fedsec.state.sqlite import DB_FILE, open_sqlite

    root = kit_root / STORE_DIR
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"server kit: cannot make {STORE_DIR}/: {exc.strerror or exc}") from exc
    return open_sqlite(root / DB_FILE, clock=clock)
