"""Start real fedsec processes on 127.0.0.1 for a test, and stop every one of them by pid.

Federation provisions a project into tmp_path (ports taken by binding port 0),
starts the server and clients as `python -m fedsec ...`, waits on conditions
(never a bare sleep), and on teardown stops each process it started by pid and
prints the logs when the test failed.

mlflow_server() runs a real MLflow tracking server for a test, chromium() and
screenshot() look at its UI in headless Chromium (Debian's chromium), and
keep_artifact() copies a file to $FEDSEC_TEST_ARTIFACTS (default
test-artifacts/ in the repository, git-ignored) for CI to keep.

With through_proxy, the kits name a fault proxy (tests.faultproxy) as the
server's fl port and the server listens on another port behind it
(`fedsec server --fl-port`): every site connection passes the proxy, whose
faults the test switches at run time (Federation.proxy).

With replicas=N, the server has N replicas (server1-a, server1-b, ... on
127.0.0.1, each on ports of its own), each a kit of its own: Federation.servers
names them in the order sites and admins try them; start, kill and the log
helpers take a replica's name where they take "server1" otherwise. With a
postgres store the replicas share one store folder as well (the first's
store/, which the others' kits link to): a highly available server.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import yaml

from fedsec import _proc
from fedsec.provision import load_project, provision
from tests.faultproxy import FaultProxy

ADMIN = "admin@acme.org"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_workflow(job_folder: Path, **settings: Any) -> Path:
    """Change workflow settings in an exported job's app/config.yml (those a recipe does not take)."""
    config = job_folder / "app" / "config.yml"
    doc = yaml.safe_load(config.read_text())
    doc["workflow"].update(settings)
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return job_folder


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Follower:
    """Runs target(out) in a thread, out a text stream whose lines the test waits on (a followed log, a command).

    wait_line() waits for a line holding a needle; join() for target's end, whose result or error it returns.
    """

    def __init__(self, target: Callable[[TextIO], Any]) -> None:
        self._text: list[str] = []
        self._lock = threading.Lock()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(target,), name="follower", daemon=True)
        self._thread.start()

    def _main(self, target: Callable[[TextIO], Any]) -> None:
        follower = self

        class _Out(io.StringIO):
            def write(self, text: str) -> int:
                with follower._lock:
                    follower._text.append(text)
                return len(text)

        try:
            self.result = target(_Out())
        except BaseException as exc:  # handed to the test by join()
            self.error = exc

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return "".join(self._text).splitlines()

    def wait_line(self, needle: str, timeout: float) -> str:
        def seen() -> str | bool:
            if self.error is not None:
                return True
            return next((line for line in self.lines if needle in line), "")

        found = wait_until(seen, timeout, f"a line holding {needle!r}")
        if self.error is not None:
            raise AssertionError(f"the follower failed: {self.error!r}")
        return str(found)

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the follower did not end within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


class Federation:
    """A provisioned project and the processes started from its kits."""

    def __init__(
        self,
        root: Path,
        n_clients: int = 3,
        heartbeat_timeout: float = 30.0,
        name: str = "itest",
        extra_admins: tuple[tuple[str, str, str], ...] = (),
        admin_session_timeout: float = 1800.0,
        he: bool = False,
        site_orgs: tuple[str, ...] = (),
        through_proxy: bool = False,
        replicas: int = 0,
        server_store: Any = None,
    ) -> None:
        """site_orgs: the org of site-1, site-2, ... in turn (default acme for every site).

        through_proxy: sites reach the server only through self.proxy, a FaultProxy.
        replicas: the server's replicas (0: a server of one replica, kit server1, as always).
        server_store: the server's `store` setting in project.yml (None: the default, sqlite).
        """
        assert not (replicas and through_proxy), "a fault proxy in front of replicas is not built"
        self.root = root
        self.n_clients = n_clients
        self.proxy: FaultProxy | None = None
        self._server_fl_port = 0  # where the server listens when it is behind the proxy
        fl_port = free_port()
        if through_proxy:
            self._server_fl_port = fl_port
            self.proxy = FaultProxy(fl_port).start()
            fl_port = self.proxy.port
        participants: list[dict[str, Any]] = [
            {
                "name": "server1",
                "type": "server",
                "org": "acme",
                "host_names": ["localhost", "127.0.0.1"],
                "fl_port": fl_port,
                "admin_port": free_port(),
                "heartbeat_timeout": heartbeat_timeout,
                "admin_session_timeout": admin_session_timeout,
            }
        ]
        self.servers = [f"server1-{chr(ord('a') + i)}" for i in range(replicas)] or ["server1"]
        if replicas:
            participants[0]["replicas"] = [
                {"name": name, "host": "127.0.0.1", "fl_port": free_port(), "admin_port": free_port()}
                for name in self.servers
            ]
        if server_store is not None:
            participants[0]["store"] = server_store
        orgs = list(site_orgs) + ["acme"] * n_clients
        participants += [{"name": f"site-{i}", "type": "client", "org": orgs[i - 1]} for i in range(1, n_clients + 1)]
        participants.append({"name": ADMIN, "type": "admin", "org": "acme", "role": "project_admin"})
        participants += [{"name": n, "type": "admin", "org": o, "role": r} for n, o, r in extra_admins]
        doc = {"api_version": 1, "name": name, "participants": participants, "features": {"he": {"enabled": he}}}
        yml = root / f"{name}.yml"
        yml.write_text(yaml.safe_dump(doc))
        self.prod = provision(load_project(yml), root / "ws").prod_dir
        if replicas and isinstance(server_store, dict) and "postgres" in server_store:
            shared = self.kit(self.servers[0]) / "store"  # one store folder (a shared mount in production)
            shared.mkdir(mode=0o700, exist_ok=True)
            for name in self.servers[1:]:
                (self.kit(name) / "store").symlink_to(shared)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.all_pids: list[int] = []

    def set_datasets(self, **paths: Path) -> None:
        """Each site's operator lists these data sets (name=path) in its local/site_settings.yml (0600)."""
        text = yaml.safe_dump({"datasets": {name: str(path) for name, path in paths.items()}})
        for i in range(1, self.n_clients + 1):
            settings = self.kit(f"site-{i}") / "local" / "site_settings.yml"
            settings.write_text(text)
            settings.chmod(0o600)

    def set_postgres_dsn(self, dsn: str, mode: int = 0o600) -> None:
        """Write the server's local/postgres.dsn (its store setting names it), in every replica's kit."""
        for name in self.servers:
            path = self.kit(name) / "local" / "postgres.dsn"
            path.write_text(dsn + "\n")
            path.chmod(mode)

    def kit(self, name: str) -> Path:
        return self.prod / name

    @property
    def admin_kit(self) -> Path:
        return self.kit(ADMIN)

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        kind = "server" if name in self.servers else "client"
        if kind == "server" and self._server_fl_port:
            extra = ("--fl-port", str(self._server_fl_port), *extra)
        mark = len(self.log(name))
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fedsec", kind, "--kit", str(self.kit(name)), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.all_pids.append(proc.pid)
        if kind == "server":  # until it listens (or exits: a refused kit)
            wait_until(lambda: " listening " in self.log(name)[mark:] or proc.poll() is not None, 30, "the server")
        return proc

    def start_all(self) -> None:
        self.start(self.servers[0])
        for i in range(1, self.n_clients + 1):
            self.start(f"site-{i}")
        self.wait_registered([f"site-{i}" for i in range(1, self.n_clients + 1)])

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_registered(self, sites: list[str], timeout: float = 30.0, since: int = 0, server: str = "") -> None:
        """Until every site registered with server (a replica's name; default the first), since offset since."""
        server = server or self.servers[0]

        def done() -> bool:
            text = self.log(server)[since:]
            return all(f"site={s} registered" in text for s in sites)

        wait_until(done, timeout, f"{sites} registered with {server}")

    def wait_log(self, name: str, needle: str, timeout: float, since: int = 0) -> None:
        wait_until(lambda: needle in self.log(name)[since:], timeout, f"{needle!r} in the log of {name}")

    def workflow_log(self, job_id: str) -> str:
        """The log of a job's workflow process on the (first) server ('' before it starts)."""
        path = self.kit(self.servers[0]) / "store" / "jobs" / job_id / "workflow.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def step_digests(self, job_id: str) -> dict[str, str]:
        """Round -> the FedOpt step digest the sites of an HE fedopt job agreed on, as its workflow logged them."""
        return dict(
            re.findall(r"round=(\d+) the sites agree on the fedopt step digest=(\S+)", self.workflow_log(job_id))
        )

    def job_log(self, site: str, job_id: str) -> str:
        """The log of a job's script on a site, as the site writes it ('' before it starts)."""
        path = self.kit(site) / "jobs" / job_id / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def job_work(self, site: str, job_id: str) -> Path:
        """The work folder of a job's script on a site (its current directory)."""
        return self.kit(site) / "jobs" / job_id / "work"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, sig)
        proc.wait(10)

    def port_owner(self, port: int) -> str | None:
        """The participant whose process holds the local TCP socket bound to port (from /proc), or None."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
        for name, proc in self.procs.items():
            try:
                fds = list(Path(f"/proc/{proc.pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(fd) in inodes:
                        return name
                except OSError:
                    continue
        return None

    def job_pids(self, site: str) -> list[int]:
        """Pids of training scripts running under a site's kit (from /proc)."""
        kit_jobs = str(self.kit(site) / "jobs")
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(kit_jobs):
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Stop every process started here: clients first (they stop their jobs), then the server."""
        order = sorted(self.procs, key=lambda n: n in self.servers)
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
        for name in order:
            proc = self.procs[name]
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for pid in self.all_pids:  # process groups of killed-and-restarted participants too
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proxy is not None:
            self.proxy.stop()

    def dump_logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            parts.append(f"===== {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        workflow_logs = [
            p for server in self.servers for p in sorted(self.prod.glob(f"{server}/store/jobs/*/workflow.log"))
        ]
        for path in sorted(self.prod.glob("*/jobs/*/log.txt")) + workflow_logs:
            parts.append(f"===== {path.relative_to(self.prod)}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def pid_alive(pid: int) -> bool:
    """Whether pid runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_running(*needles: str) -> list[int]:
    """Pids of live processes whose command line holds every one of needles (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = pid_cmdline(int(entry.name))
            if cmd and all(n in cmd for n in needles) and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


class PocFolder:
    """A `fedsec poc` folder driven through the command line, and every process its kits recorded.

    kill_all() (the fixtures' clean-up) SIGKILLs what still runs from the folder, by the pids the kits
    recorded, so a failed test leaves nothing behind.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {**os.environ, "FEDSEC": str(Path(sys.executable).parent / "fedsec")}
        self.seen: dict[str, int] = {}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedsec", "poc", *args, "--dir", str(self.folder)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )

    @property
    def prod(self) -> Path:
        return self.folder / "workspace" / "poc" / "prod_00"

    @property
    def admin_kit(self) -> Path:
        return self.prod / "admin@fedsec.local"

    def pids(self) -> dict[str, int]:
        """The pid each kit recorded in daemon.pid (remembered for the clean-up)."""
        found = {}
        for pid_file in sorted(self.prod.glob("*/daemon.pid")):
            found[pid_file.parent.name] = int(pid_file.read_text().strip())
        self.seen.update(found)
        return found

    def kill_all(self) -> None:
        if self.prod.exists():
            self.pids()
        for pid in self.seen.values():
            if pid_alive(pid) and str(self.folder) in pid_cmdline(pid):
                os.kill(pid, signal.SIGKILL)

    def dump_logs(self) -> str:
        parts = [f"===== pids {self.seen}"]
        for path in sorted(self.prod.glob("*/log.txt")) + sorted(self.prod.glob("*/jobs/*/log.txt")):
            parts.append(f"===== {path.relative_to(self.prod)}\n{path.read_text(errors='replace')[-4000:]}")
        for path in sorted(self.prod.glob("server/store/jobs/*/workflow.log")):
            parts.append(f"===== {path.relative_to(self.prod)}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


# -- a real MLflow tracking server, and headless Chromium to look at its UI --

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[2]


def mlflow_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # URLError, a refused or reset connection
        return False


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """The URL of a running `mlflow server` (this venv's) on 127.0.0.1, its SQLite store and artifacts in root.

    It runs in its own process group, stopped by pid (TERM, then KILL) on the way out; its log is root/server.log.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'm.db'}",
        "--default-artifact-root", str(root / "art"),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    proc = _proc.start(argv, cwd=root, env=dict(os.environ), log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            return mlflow_healthy(url)

        wait_until(up, timeout=120, what=f"mlflow server on {url}/health", interval=0.5)
        yield url
    finally:
        _proc.stop(proc, grace=5)  # TERM its process group (uvicorn workers, job runner), KILL after 5 s
        _proc.stop(proc)  # the leader is gone: KILL whatever is left of the group


def mlflow_api(url: str, endpoint: str, body: dict[str, Any] | None = None, **query: str) -> Any:
    """The JSON answer of MLflow's REST API at url/api/2.0/mlflow/<endpoint>: GET with query, or POST body."""
    address = f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def chromium(*args: str, profile: Path, budget_ms: int = 15000) -> subprocess.CompletedProcess[str]:
    """Run Debian's headless Chromium with a fresh profile; fails the test when it is missing or fails.

    budget_ms: the virtual time the page has to load and render before Chromium dumps or shoots it.
    """
    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get update && apt-get install -y chromium)"
        )
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def screenshot(page: str, path: Path, profile: Path, size: str = "1400,900", budget_ms: int = 15000) -> Path:
    """A PNG of page at path (made anew), checked to be a PNG of some substance; kept as a test artifact."""
    path.unlink(missing_ok=True)
    chromium(f"--screenshot={path}", f"--window-size={size}", page, profile=profile, budget_ms=budget_ms)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert path.stat().st_size > 10_000, f"{path} is nearly empty"
    return keep_artifact(path)


def artifacts_dir() -> Path:
    """Where tests keep files for CI to keep: $FEDSEC_TEST_ARTIFACTS, else test-artifacts/ (git-ignored)."""
    where = os.environ.get("FEDSEC_TEST_ARTIFACTS")
    path = Path(where) if where else REPO_ROOT / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_artifact(path: Path) -> Path:
    """Copy path (a file under the test's tmp_path) into artifacts_dir(); the copy's path."""
    kept = artifacts_dir() / path.name
    shutil.copyfile(path, kept)
    return kept
