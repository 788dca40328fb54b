"""A real PostgreSQL server for tests: initdb into a fresh folder, pg_ctl start, a database per test, stop by PID.

The one home of the PostgreSQL fixture (the state contract suite, the integration test of a
server on PostgreSQL, and later the HA tests use it). Debian's postgresql package provides
initdb and pg_ctl (scripts/check installs it where missing). PostgreSQL refuses to run as
root, so under root the server runs as the package's `postgres` user, in a folder it owns.
It listens on a Unix socket in that folder and on 127.0.0.1 at a free port, with password
(scram-sha-256) authentication for the user `fedsec`, so a DSN holds a password as in
production. stop() reads postmaster.pid, asks pg_ctl for a fast stop, and kills that PID if
it is still there.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

USER = "fedsec"
RUN_AS = "postgres"  # the package's user, when the tests run as root
_STOP_SECONDS = 30.0


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL is not installed (initdb not found): apt-get install postgresql; scripts/check does"
        )
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    """A running PostgreSQL server (see the module docstring)."""

    root: Path
    port: int
    password: str
    pid: int = 0
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.root)
        return f"host={host} port={self.port} dbname={dbname} user={USER} password={self.password}"

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        self._databases += 1
        name = f"t{self._databases}_{secrets.token_hex(4)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self) -> None:
        """Stop the server by its PID (fast shutdown, then SIGKILL) and remove its folder."""
        try:
            if self.pid and self.alive():
                _run_as(_pg("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "20", check=False)
                deadline = time.monotonic() + _STOP_SECONDS
                while self.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
                if self.alive():
                    os.kill(self.pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _pg(tool: str) -> str:
    return str(_bin_dir() / tool)


def _run_as(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = list(argv)
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL, timeout=120)


def start() -> PgServer:
    """initdb into a fresh folder and start a server there; the caller stops it (PgServer.stop)."""
    root = Path(tempfile.mkdtemp(prefix="fedsec-pg-"))
    password = secrets.token_urlsafe(16)
    server = PgServer(root, _free_port(), password)
    try:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(RUN_AS)
            os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chmod(root, 0o700)
        pwfile = root / "pw"
        pwfile.write_text(password)
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        init = _run_as(
            _pg("initdb"), "-D", str(server.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
            "-E", "UTF8", "--no-sync", check=False,
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        pwfile.unlink()
        options = f"-k {root} -p {server.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = root / "server.log"
        started = _run_as(
            _pg("pg_ctl"), "start", "-D", str(server.data), "-o", options, "-l", str(log), "-w", "-t", "60", check=False
        )
        pid_file = server.data / "postmaster.pid"
        if pid_file.exists():
            server.pid = int(pid_file.read_text().split("\n", 1)[0])
        if started.returncode != 0:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else started.stderr
            raise RuntimeError(f"pg_ctl start failed: {text.strip()}")
    except BaseException:
        server.stop()
        raise
    return server
