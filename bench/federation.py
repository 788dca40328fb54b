"""A real federation for the benchmarks: provision, start, watch and stop it as a user would.

Provisions provision/secure_project.yml into a temporary folder with free ports
(bound on 127.0.0.1 port 0), starts it with copies of workspaces/start_fl.sh and
stop_fl.sh (they keep their record beside themselves, so runs never share one),
reads timestamps from the fedsec logs and samples resident memory from /proc.
Every process it starts is stopped by its pid when the Federation leaves its
`with` block. Nothing here asserts anything about time.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "provision/secure_project.yml"
SERVER, ADMIN = "server1", "admin@fedsec.local"
_TICKS = os.sysconf("SC_CLK_TCK")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"  # logging's asctime, as fedsec.logs writes it


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 (all held open at once while they are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def log_time(line: str) -> float | None:
    """The epoch time at the start of a fedsec log line, or None if it has none."""
    try:
        return datetime.datetime.strptime(line[:23], _TIME_FORMAT).timestamp()
    except ValueError:
        return None


def timed_lines(path: Path, needle: str, start: int = 0) -> Iterator[tuple[float, str]]:
    """(time, line) of each timestamped line of path, from byte offset start, that contains needle."""
    if not path.exists():
        return
    with path.open("rb") as f:
        f.seek(start)
        for raw in f:
            line = raw.decode(errors="replace")
            when = log_time(line)
            if when is not None and needle in line:
                yield when, line.rstrip("\n")


def tail(path: Path, n: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of pid in MiB from /proc; (0, 0) once it has gone."""
    values = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition("\t")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return values["VmRSS:"], values["VmHWM:"]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first); [] once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of pid so far, from /proc; None once it has gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS if fields else None


def reset_peak(pid: int) -> None:
    """Reset the kernel's VmHWM of pid to its current VmRSS (Linux clear_refs 5), so the peak is this run's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def children(parents: list[int], needle: str) -> list[int]:
    """Pids whose parent is in parents and whose command line contains needle."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if not fields or int(fields[1]) not in parents:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class Sampler:
    """Samples the memory of groups of processes every interval seconds in a thread.

    roles maps a name to a function that lists the group's pids at that moment (children
    come and go); each tick records the summed VmRSS of every group, and the highest
    VmHWM (the kernel's own peak) seen for any pid of the group.
    """

    roles: dict[str, Callable[[], list[int]]]
    interval: float = 0.2
    phase: str = ""  # a label stored with each tick: set it to split peaks by step
    ticks: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    hwm: dict[str, float] = field(default_factory=dict)
    seen: dict[int, str] = field(default_factory=dict)  # pid: its start time, to stop exactly it later
    _cpu: dict[int, tuple[str, float, float]] = field(default_factory=dict)  # pid: role, first, last
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            tick: dict[str, float] = {}
            for role, pids in self.roles.items():
                tick[role] = 0.0
                for pid in pids():
                    self.seen.setdefault(pid, started(pid))
                    used = cpu_seconds(pid)
                    if used is not None:
                        first = self._cpu[pid][1] if pid in self._cpu else used
                        self._cpu[pid] = (role, first, used)
                    rss, hwm = memory_mib(pid)
                    tick[role] += rss
                    self.hwm[role] = max(self.hwm.get(role, 0.0), hwm)
            self.ticks.append((self.phase, tick))

    def cpu(self, role: str) -> float:
        """CPU seconds (user + system) the role's processes used while sampled."""
        return sum(last - first for r, first, last in self._cpu.values() if r == role)

    def peak(self, *roles: str, phase: str | None = None) -> float:
        """The highest summed VmRSS of roles at one tick (of one phase, if given), MiB."""
        ticks = [t for p, t in self.ticks if phase is None or p == phase]
        return max((sum(t.get(r, 0.0) for r in roles) for t in ticks), default=0.0)


class Federation:
    """A provisioned copy of secure_project with free ports, started and stopped by pid."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        doc = yaml.safe_load(PROJECT.read_text())
        for p in doc["participants"]:
            if p["type"] == "server":
                p["fl_port"], p["admin_port"] = free_ports(2)
        yml = tmp / "project.yml"
        yml.write_text(yaml.safe_dump(doc, sort_keys=False))
        subprocess.run(
            [sys.executable, "-m", "fedsec", "provision", "-p", str(yml), "-w", str(tmp / "ws")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.prod = tmp / "ws" / str(doc["name"]) / "prod_00"
        self.scripts = tmp / "scripts"
        self.scripts.mkdir()
        for name in ("start_fl.sh", "stop_fl.sh"):
            shutil.copy2(ROOT / "workspaces" / name, self.scripts / name)
        self.env = {**os.environ, "FEDSEC": str(Path(sys.executable).parent / "fedsec")}
        self.pids: dict[int, str] = {}  # pid: start time of every parent started, stopped at the end
        self.extra: dict[int, str] = {}  # the same for children seen (workflow, scripts), if left over

    def kit(self, name: str) -> Path:
        return self.prod / name

    def set_warm_launcher(self, sites: list[str], warm: bool) -> None:
        """Each site's operator turns its warm job launcher on or off (local/site_settings.yml, 0600)."""
        for site in sites:
            path = self.kit(site) / "local" / "site_settings.yml"
            path.write_text(f"warm_launcher: {'true' if warm else 'false'}\n")
            path.chmod(0o600)

    @property
    def server_log(self) -> Path:
        return self.kit(SERVER) / "log.txt"

    def pid(self, name: str) -> int:
        return int((self.kit(name) / "daemon.pid").read_text())

    def start(self, n_clients: int) -> float:
        """Run start_fl.sh n_clients; return the epoch time just before it ran."""
        began = time.time()
        try:
            subprocess.run(
                [str(self.scripts / "start_fl.sh"), str(n_clients), str(self.prod)],
                check=True,
                env=self.env,
                stdout=subprocess.DEVNULL,
            )
        finally:  # start_fl.sh removes each kit's daemon.pid before it launches it: these are this run's
            for name in [SERVER, *(f"site-{i}" for i in range(1, n_clients + 1))]:
                if (self.kit(name) / "daemon.pid").exists():
                    self.pids[self.pid(name)] = started(self.pid(name))
        return began

    def wait_registered(self, sites: list[str], start: int, timeout: float = 120.0) -> dict[str, float]:
        """Wait until the server log (from byte start) says every site registered; their first times."""
        deadline = time.monotonic() + timeout
        while True:
            times: dict[str, float] = {}
            for when, line in timed_lines(self.server_log, " registered version=", start):
                site = line.split("site=", 1)[1].split()[0]
                times.setdefault(site, when)
            if all(s in times for s in sites):
                return times
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sorted(times)} of {sites} registered in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """stop_fl.sh, then TERM/KILL by pid anything started here that is still alive."""
        subprocess.run([str(self.scripts / "stop_fl.sh")], env=self.env, stdout=subprocess.DEVNULL, check=False)
        for pid, start in sorted((self.pids | self.extra).items()):
            if pid != os.getpid():  # a Sampler may have watched this process too
                _stop_pid(pid, start)
        self.pids.clear()
        self.extra.clear()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if et is not None and not issubclass(et, (KeyboardInterrupt, SystemExit)):
                print(self.logs(), file=sys.stderr)
        finally:
            self.stop()

    def logs(self, n: int = 30) -> str:
        """The ends of the server, site, workflow and script logs, for a failed run."""
        paths = [self.server_log, *sorted(self.prod.glob("site-*/log.txt"))]
        paths += sorted(self.prod.glob("*/store/jobs/*/workflow.log")) + sorted(self.prod.glob("*/jobs/*/log.txt"))
        return "\n".join(f"----- {p.relative_to(self.prod)}\n{tail(p, n)}" for p in paths if p.exists())


def started(pid: int) -> str:
    """pid's start time (clock ticks after boot), which tells it from a later process given the same pid."""
    fields = _stat(pid)
    return fields[19] if fields else ""


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z" and fields[19] == start


def _stop_pid(pid: int, start: str) -> None:
    """TERM, then KILL after 5 s, the process pid if it is still the one that started at start."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not start or not _alive(pid, start):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while _alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
