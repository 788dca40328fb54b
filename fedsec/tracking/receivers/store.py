"""The server's embedded MLflow store (<server kit>/tracking/mlflow): set up once, under a lock, never left half-made.

prepare_embedded_store() is the only code that creates or migrates the
store's schema. It holds an exclusive fcntl lock on mlflow/.setup.lock while it
looks, so job processes that start together never migrate at once; a store
already at MLflow's latest schema costs one small SQLite read. A new store is
built under a temporary name and renamed into place, and an old one is
upgraded on a copy that replaces it only when the upgrade has finished, so a
process killed at any point leaves either the old store or the new one.

A store that cannot be used (a migration interrupted by an older fedsec left
an ``_alembic_tmp_*`` table; tables without a schema version; a version this
MLflow cannot upgrade; not an SQLite file) is set aside as
``mlflow.db.broken-<UTC time>`` with a warning naming why, and a fresh store is
made: tracking never stops jobs, and the old runs stay in the file set aside.
Messages name files relative to the kit (``tracking/mlflow/mlflow.db``), never
by absolute path. This module uses MLflow's own schema functions
(mlflow.store.db.utils), the ones behind ``mlflow db upgrade``.

``python -m fedsec.tracking.receivers.store --tracking-dir DIR`` runs it once;
the server starts that at each start.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec import _deps, logs
from fedsec.errors import FedsecError, JobError

log = logging.getLogger(__name__)

STORE_DIR = "mlflow"  # tracking_dir / STORE_DIR
STORE_DB = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LOCK_FILE = ".setup.lock"
SHOWN = f"tracking/{STORE_DIR}/{STORE_DB}"  # how messages name the store
LOCK_SECONDS = 600.0  # how long a process waits for another one's setup before it gives up (and retries later)
_TMP_TABLE_PREFIX = "_alembic_tmp_"
_SIDE_FILES = ("-journal", "-wal", "-shm")


def shown(tracking_dir: Path) -> str:
    """How messages name the store of tracking_dir, relative to the server kit: SHOWN, or store/SHOWN for the
    store of a replicated server (its tracking folder is <kit>/store/tracking, shared by the replicas)."""
    return f"store/{SHOWN}" if tracking_dir.parent.name == "store" else SHOWN


@dataclass(frozen=True)
class EmbeddedStore:
    """A ready embedded store: its SQLAlchemy URI and its artifact root (a file:// URI)."""

    uri: str
    artifact_location: str


class _Broken(Exception):
    """The store cannot be used; the text says why."""


def embedded_uri(tracking_dir: Path) -> str:
    """sqlite:////abs/<tracking_dir>/mlflow/mlflow.db."""
    return f"sqlite:///{(tracking_dir / STORE_DIR / STORE_DB).resolve()}"


def prepare_embedded_store(tracking_dir: Path, lock_seconds: float = LOCK_SECONDS) -> EmbeddedStore:
    """Make the embedded store of tracking_dir ready at MLflow's latest schema; return where it is.

    Sets a broken store aside and makes a fresh one (logged as a warning). Raises JobError when the folder cannot
    be made, the lock is not free within lock_seconds, or a fresh store cannot be made either; DependencyError
    when mlflow is not installed.
    """
    _deps.require("mlflow")
    root = (tracking_dir / STORE_DIR).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise JobError(f"tracking: cannot make tracking/{STORE_DIR}: {exc.strerror or exc}") from exc
    with _locked(root / LOCK_FILE, lock_seconds):
        db = root / STORE_DB
        try:
            state = _inspect(db)
        except _Broken as exc:
            _set_aside(db, str(exc))
            state = "missing"
        if state == "old":
            try:
                _upgrade(db)
            except _Broken as exc:
                _set_aside(db, str(exc))
                state = "missing"
        if state == "missing":
            _create(db)
        if state != "ready":
            _forget_engines(embedded_uri(tracking_dir))
    return EmbeddedStore(embedded_uri(tracking_dir), (root / ARTIFACTS_DIR).as_uri())


def _forget_engines(uri: str) -> None:
    """Drop MLflow's cached engine of uri in this process: it would still point at the file that was replaced."""
    module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    engines: dict[str, Any] = getattr(getattr(module, "SqlAlchemyStore", None), "_engine_map", {})
    engine = engines.pop(uri, None)
    if engine is not None:
        engine.dispose()


@contextlib.contextmanager
def _locked(path: Path, seconds: float) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise JobError(f"tracking: cannot open tracking/{STORE_DIR}/{LOCK_FILE}: {exc.strerror or exc}") from exc
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JobError(
                        f"tracking: another process has been setting up {SHOWN} for more than {seconds:.0f} s"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _latest_revision() -> str:
    from mlflow.store.db import utils

    latest: Callable[[], str] = utils._get_latest_schema_revision  # untyped in MLflow
    return str(latest())


def _inspect(db: Path) -> str:
    """ "ready", "old" (a valid store at an older schema) or "missing"; _Broken when it cannot be used."""
    if not db.exists() or db.stat().st_size == 0:
        return "missing"
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            left = sorted(t for t in tables if t.startswith(_TMP_TABLE_PREFIX))
            if left:
                raise _Broken(f"an interrupted schema migration left the table {left[0]}")
            if "alembic_version" not in tables:
                if tables:
                    raise _Broken("it has tables but no schema version (its creation was interrupted)")
                return "missing"
            versions = [row[0] for row in con.execute("SELECT version_num FROM alembic_version")]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise _Broken(f"it is not a usable SQLite database ({exc})") from exc
    if len(versions) != 1:
        raise _Broken(f"it has {len(versions)} schema versions, not one")
    return "ready" if versions[0] == _latest_revision() else "old"


def _engine_run(db: Path, fresh: bool) -> None:
    """Create (fresh) or upgrade the MLflow schema of the SQLite file db."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from alembic.util import CommandError
        from mlflow.exceptions import MlflowException
        from mlflow.store.db import utils
        from sqlalchemy.exc import SQLAlchemyError

        # MLflow's functions are untyped: given their types here
        make_engine: Callable[[str], Any] = utils.create_sqlalchemy_engine
        schema: Callable[[Any], None] = utils._initialize_tables if fresh else utils._upgrade_db
        engine = make_engine(f"sqlite:///{db}")
        try:
            schema(engine)
        except (MlflowException, SQLAlchemyError, CommandError, OSError) as exc:
            raise _Broken(f"its schema could not be {'made' if fresh else 'upgraded'}: {str(exc)[:300]}") from exc
        finally:
            engine.dispose()


def _staging(db: Path) -> Path:
    tmp = db.with_name(f".{db.name}.setup-{os.getpid()}")
    for suffix in ("", *_SIDE_FILES):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    return tmp


def _create(db: Path) -> None:
    tmp = _staging(db)
    try:
        _engine_run(tmp, fresh=True)
        os.replace(tmp, db)
    except _Broken as exc:
        raise JobError(f"tracking: cannot make a new {SHOWN}: {exc}") from exc
    except OSError as exc:
        raise JobError(f"tracking: cannot make a new {SHOWN}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("tracking: made a new MLflow store %s", SHOWN)


def _upgrade(db: Path) -> None:
    """Upgrade a copy of db, then put it in db's place (_Broken when the upgrade fails)."""
    tmp = _staging(db)
    try:
        src, dst = sqlite3.connect(db, timeout=30), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        _engine_run(tmp, fresh=False)
        os.replace(tmp, db)
    except sqlite3.DatabaseError as exc:
        raise _Broken(f"it could not be copied for its upgrade ({exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("tracking: upgraded %s to MLflow's latest schema", SHOWN)


def _set_aside(db: Path, why: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = db.with_name(f"{db.name}.broken-{stamp}")
    if aside.exists():
        aside = aside.with_name(f"{aside.name}-{os.getpid()}")
    try:
        os.replace(db, aside)
        for suffix in _SIDE_FILES:
            side = Path(f"{db}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{aside}{suffix}"))
    except OSError as exc:
        raise JobError(f"tracking: {SHOWN} cannot be used ({why}) nor set aside: {exc.strerror or exc}") from exc
    log.warning(
        "tracking: %s could not be used: %s; it is set aside as tracking/%s/%s (its runs stay there) "
        "and a new store is made",
        SHOWN, why, STORE_DIR, aside.name,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Set up the embedded store once; exit 0 when it is ready, 1 (with one error line) when not."""
    parser = argparse.ArgumentParser(prog="fedsec.tracking.receivers.store")
    parser.add_argument("--tracking-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logs.setup()
    try:
        prepare_embedded_store(args.tracking_dir)
    except FedsecError as exc:
        log.error("%s", exc)
        return 1
    log.info("tracking: %s is ready", SHOWN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
