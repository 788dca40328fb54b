"""A proof-of-concept federation on this machine in one call: provision N sites into a folder, start, stop.

start() writes DIR/project.yml (a server on 127.0.0.1 on free ports, site-1..site-N, one project
admin; HE when asked), provisions it into DIR/workspace/, and starts the server and every site from
their kits with each kit's own startup/start.sh, recording each kit in DIR/.started_kits before it
starts (the record workspaces/start_fl.sh keeps too). It returns once the server listens and every
site registered. stop() runs each recorded kit's startup/stop_fl.sh, which stops exactly the
process that kit runs, by its pid. A second start() on a folder that runs is refused.

Processes are never looked up by name; nothing here runs as anyone but the caller.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsec import _fs
from fedsec.errors import ConfigError, FedsecError
from fedsec.provision.builder import provision
from fedsec.provision.project import parse_project

DEFAULT_DIR = Path("fedsec-poc")
PROJECT_NAME = "poc"
PROJECT_FILE = "project.yml"
WORKSPACE = "workspace"
RECORD = ".started_kits"  # kit folders in start order, one a line (as workspaces/start_fl.sh writes it)
SERVER = "server"
ADMIN = "admin@fedsec.local"
MAX_SITES = 64
START_WAIT = 120  # seconds each kit's start.sh waits for its process to listen / register


@dataclass(frozen=True)
class Poc:
    """A provisioned poc folder: its kits, and whether its project encrypts updates."""

    folder: Path
    prod: Path
    server: Path
    sites: tuple[Path, ...]
    admin: Path
    he: bool


@dataclass(frozen=True)
class Started:
    """A kit that start() started: its name, the pid its start.sh recorded and its log."""

    name: str
    pid: int
    log: Path


def start(folder: Path, n_sites: int, *, he: bool = False, fedsec_command: str | None = None) -> tuple[Poc, bool]:
    """Provision folder (unless it holds this poc already) and start it; return (the poc, newly provisioned).

    Raises ConfigError for a bad n_sites, a folder that holds something else or another poc, or a
    poc that runs already (naming the command that stops it); FedsecError when a process does not
    start (what did start is stopped again, and its log named). Ctrl-C stops what was started.
    """
    folder = folder.absolute()
    if not 1 <= n_sites <= MAX_SITES:
        raise ConfigError(f"poc: the number of sites must be between 1 and {MAX_SITES}, got {n_sites}")
    alive = running(folder)
    if alive:
        names = ", ".join(f"{s.name} (pid {s.pid})" for s in alive)
        raise ConfigError(f"poc {folder} runs already: {names}; stop it with: fedsec poc stop --dir {folder}")
    env = {**os.environ, "FEDSEC": fedsec_command or _fedsec_command()}
    poc = _existing(folder, n_sites, he)
    fresh = poc is None
    if poc is None:
        poc = _provision(folder, n_sites, he)
    _fs.write_atomic(folder / RECORD, b"")
    try:
        _start_kits(poc, env)
    except BaseException:
        stop(folder)
        raise
    return poc, fresh


def stop(folder: Path) -> list[str]:
    """Stop every kit folder/.started_kits lists, last started first, with its startup/stop_fl.sh.

    Returns what each script said (or that nothing was recorded). The record is removed afterwards.
    """
    folder = folder.absolute()
    record = folder / RECORD
    kits = _recorded(folder)
    if not kits:
        record.unlink(missing_ok=True)
        return [f"nothing to stop: no poc started from {folder}"]
    said = []
    for kit in reversed(kits):
        script = kit / "startup" / "stop_fl.sh"
        if not script.is_file():
            said.append(f"{kit.name}: no startup/stop_fl.sh; not stopped")
            continue
        done = subprocess.run([str(script)], capture_output=True, text=True, check=False, timeout=60)
        said.append((done.stdout + done.stderr).strip() or f"{kit.name}: stop_fl.sh exited {done.returncode}")
    record.unlink(missing_ok=True)
    return said


def running(folder: Path) -> list[Started]:
    """The recorded kits of folder whose process runs (its pid alive, started from that kit)."""
    found = []
    for kit in _recorded(folder.absolute()):
        pid = _kit_pid(kit)
        if pid is not None:
            found.append(Started(kit.name, pid, kit / "log.txt"))
    return found


def _existing(folder: Path, n_sites: int, he: bool) -> Poc | None:
    """The poc folder holds, checked to be the one asked for; None when folder is missing or empty."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    if not (folder / PROJECT_FILE).is_file():
        raise ConfigError(f"poc: {folder} exists and is not a poc folder (no {PROJECT_FILE}); give another --dir")
    prods = sorted((folder / WORKSPACE / PROJECT_NAME).glob("prod_*"))
    if not prods:
        raise ConfigError(f"poc: {folder} holds no provisioned project; delete it or give another --dir")
    poc = _load(folder, prods[-1])
    if len(poc.sites) != n_sites or poc.he != he:
        have = f"{len(poc.sites)} sites{' with HE' if poc.he else ''}"
        want = f"{n_sites}{' with HE' if he else ''}"
        raise ConfigError(f"poc: {folder} holds a poc of {have}; for {want}, give another --dir or delete it")
    return poc


def _provision(folder: Path, n_sites: int, he: bool) -> Poc:
    participants: list[dict[str, Any]] = [
        {
            "name": SERVER,
            "type": "server",
            "org": "poc",
            "host_names": ["localhost", "127.0.0.1"],
            "fl_port": _free_port(),
            "admin_port": _free_port(),
        }
    ]
    participants += [{"name": f"site-{i}", "type": "client", "org": "poc"} for i in range(1, n_sites + 1)]
    participants.append({"name": ADMIN, "type": "admin", "org": "poc", "role": "project_admin"})
    doc = {
        "api_version": 1,
        "name": PROJECT_NAME,
        "description": f"A proof-of-concept federation on this machine: {n_sites} sites (fedsec poc).",
        "participants": participants,
        "features": {"he": {"enabled": he}},
    }
    project = parse_project(doc)
    folder.mkdir(parents=True, exist_ok=True)
    result = provision(project, folder / WORKSPACE)
    _fs.write_atomic(folder / PROJECT_FILE, yaml.safe_dump(doc, sort_keys=False).encode())
    return _load(folder, result.prod_dir)


def _load(folder: Path, prod: Path) -> Poc:
    doc = yaml.safe_load((folder / PROJECT_FILE).read_text())
    try:
        he = bool(doc["features"]["he"]["enabled"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"poc: {folder / PROJECT_FILE} is not a poc project file") from exc
    sites = sorted(
        (p for p in prod.iterdir() if (p / "startup" / "fed_client.json").is_file()),
        key=lambda p: int(p.name.rpartition("-")[2]) if p.name.rpartition("-")[2].isdigit() else 0,
    )
    server, admin = prod / SERVER, prod / ADMIN
    if not (server / "startup" / "fed_server.json").is_file() or not (admin / "startup").is_dir():
        raise ConfigError(f"poc: {prod} lacks the {SERVER} or {ADMIN} kit; delete {folder} or give another --dir")
    return Poc(folder=folder, prod=prod, server=server, sites=tuple(sites), admin=admin, he=he)


def _start_kits(poc: Poc, env: dict[str, str]) -> None:
    """The server, until it listens; then every site at once, until each registered. Raises FedsecError."""
    _record(poc.folder, poc.server)
    server = _run_start(poc.server, env)
    _check_started(poc.server, *server.communicate(), server.returncode)
    procs = []
    for kit in poc.sites:
        _record(poc.folder, kit)
        procs.append((kit, _run_start(kit, env)))
    failures = []
    for kit, proc in procs:
        try:
            _check_started(kit, *proc.communicate(), proc.returncode)
        except FedsecError as exc:
            failures.append(str(exc))
    if failures:
        raise FedsecError("poc: " + "; ".join(failures))


def _run_start(kit: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(kit / "startup" / "start.sh"), "--wait", str(START_WAIT)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the daemon it leaves outlives this command and its terminal's signals
    )


def _check_started(kit: Path, out: str, err: str, code: int) -> None:
    """start.sh exits 0 saying "started" once the server listens or the site registered; else what it said."""
    said = out.strip()
    if code != 0 or not said.startswith("started ") or "not registered yet" in said:
        lines = (said + "\n" + err.strip()).strip().splitlines()
        last = lines[-1] if lines else f"start.sh exited {code} and said nothing"
        raise FedsecError(f"{kit.name} did not start ({last}); its log: {kit / 'log.txt'}")


def _record(folder: Path, kit: Path) -> None:
    """Add kit to the record before it starts, so stop() stops it whatever happens next."""
    with (folder / RECORD).open("a", encoding="utf-8") as f:
        f.write(f"{kit}\n")
        f.flush()
        os.fsync(f.fileno())


def _recorded(folder: Path) -> list[Path]:
    try:
        lines = (folder / RECORD).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"poc: cannot read {folder / RECORD}: {exc.strerror or exc}") from exc
    return [Path(line) for line in lines if line.strip()]


def _kit_pid(kit: Path) -> int | None:
    """The pid in kit/daemon.pid when that process is alive and runs from kit (as stop_fl.sh checks)."""
    try:
        pid = int((kit / "daemon.pid").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if stat.rpartition(")")[2].split()[0] == "Z":
        return None
    return pid if _runs_kit(argv, kit) else None


def _runs_kit(argv: Sequence[bytes], kit: Path) -> bool:
    return any(a == b"--kit" and b == os.fsencode(kit) for a, b in itertools.pairwise(argv))


def _fedsec_command() -> str:
    """The fedsec command the kits' start.sh run: $FEDSEC, else the one beside this Python, else on PATH."""
    if os.environ.get("FEDSEC"):
        return os.environ["FEDSEC"]
    beside = Path(sys.executable).parent / "fedsec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("fedsec")
    if found is None:
        raise ConfigError("poc: cannot find the fedsec command (beside this Python or on PATH); set FEDSEC")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
