"""workspaces/start_fl.sh and stop_fl.sh on a freshly provisioned secure_project: 8 sites up, then down by pid.

The project is provision/secure_project.yml with free ports, provisioned with the
`fedsec provision` command; the scripts are copied next to the test's files so
that their record of started kits (.started_kits) stays there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import free_port, pid_alive, pid_cmdline, pids_running, wait_until

REPO = Path(__file__).resolve().parents[2]
SITES = [f"site-{i}" for i in range(1, 9)]
SERVER = "server1"
ADMIN = "admin@fedsec.local"
FEDSEC = Path(sys.executable).parent / "fedsec"


def provision_secure(root: Path, **server_settings: Any) -> Path:
    """secure_project provisioned with the `fedsec provision` command into root, on free ports; its prod_00."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "provision" / "secure_project.yml").read_text())
    (server,) = [p for p in doc["participants"] if p["type"] == "server"]
    server["fl_port"], server["admin_port"] = free_port(), free_port()
    server.update(server_settings)
    project = root / "secure_project.yml"
    project.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "fedsec", "provision", "-p", str(project), "-w", str(root / "ws")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    prod_dir = root / "ws" / "secure_project" / "prod_00"
    assert f"into {prod_dir}" in done.stdout, done.stdout
    return prod_dir


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """secure_project provisioned once for the module, on free ports."""
    prod_dir = provision_secure(tmp_path_factory.mktemp("secure_project"))
    assert sorted(p.name for p in prod_dir.iterdir() if p.is_dir()) == sorted([ADMIN, SERVER, *SITES])
    return prod_dir


class Launch:
    """Copies of start_fl.sh / stop_fl.sh in a folder of their own, and what they started."""

    def __init__(self, root: Path, prod: Path) -> None:
        self.prod = prod
        self.here = root / "workspaces"
        self.here.mkdir()
        for name in ("start_fl.sh", "stop_fl.sh"):
            shutil.copy2(REPO / "workspaces" / name, self.here / name)  # keeps the executable bit
        self.record = self.here / ".started_kits"
        self.pids: dict[str, int] = {}

    def run(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FEDSEC": str(FEDSEC)}
        return subprocess.run(
            [str(self.here / script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # the daemons it leaves behind are not in pytest's process group
        )

    def read_pids(self) -> dict[str, int]:
        """The pid each kit recorded in daemon.pid (also kept here, for the clean-up)."""
        found = {}
        for kit in sorted(self.prod.iterdir()):
            pid_file = kit / "daemon.pid"
            if pid_file.is_file():
                found[kit.name] = int(pid_file.read_text().strip())
        self.pids.update(found)
        return found

    def server_log(self) -> str:
        path = self.prod / SERVER / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def dump_logs(self) -> str:
        """For the failure report of conftest.py."""
        parts = [f"===== pids {self.pids}"]
        for path in sorted(self.prod.glob("*/log.txt")):
            parts.append(f"===== {path.relative_to(self.prod)}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def kill_all(self) -> None:
        """SIGKILL every process a kit recorded that still runs from this prod folder."""
        self.read_pids()
        for pid in self.pids.values():
            if pid_alive(pid) and str(self.prod) in pid_cmdline(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launch(request: pytest.FixtureRequest, tmp_path: Path, prod: Path) -> Iterator[Launch]:
    launched = Launch(tmp_path, prod)
    request.node._federation = launched  # conftest.py prints its logs when the test fails
    try:
        yield launched
    finally:
        launched.kill_all()
        launched.record.unlink(missing_ok=True)
        for leftover in [*prod.glob("*/daemon.pid"), *prod.glob("*/log.txt")]:  # the next test starts clean
            leftover.unlink()


def test_start_eight_sites_then_stop_exactly_them(launch: Launch) -> None:
    assert launch.run("stop_fl.sh").stdout.startswith("nothing to stop")
    started = launch.run("start_fl.sh", "8", str(launch.prod))
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"started the server and 8 clients of {launch.prod}" in started.stdout

    pids = launch.read_pids()
    assert sorted(pids) == sorted([SERVER, *SITES])  # not the admin kit
    assert len(set(pids.values())) == 9
    assert launch.record.read_text().split() == [str(launch.prod / name) for name in [SERVER, *SITES]]
    wait_until(
        lambda: all(f"site={site} registered " in launch.server_log() for site in SITES),
        60,
        "all 8 sites registered with the server",
        interval=0.5,
    )
    for name, pid in pids.items():
        assert pid_alive(pid), f"{name} (pid {pid}) is not running"
        assert f"--kit {launch.prod / name}" in pid_cmdline(pid), pid_cmdline(pid)
        assert (launch.prod / name / "run" / "lock").read_text().strip() == str(pid)  # the kit's own process

    again = launch.run("start_fl.sh", "8", str(launch.prod))
    assert again.returncode == 1
    assert "run ./stop_fl.sh first" in again.stderr
    assert launch.read_pids() == pids  # nothing new was started
    direct = subprocess.run(  # fedsec launch itself refuses a kit that runs, naming its process
        [str(FEDSEC), "launch", "--kit", str(launch.prod / "site-1")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    assert direct.returncode == 1, direct.stdout + direct.stderr
    assert f"site-1 is already running from this kit (pid {pids['site-1']})" in direct.stderr
    assert launch.read_pids() == pids  # its daemon.pid still names the process that runs

    stopped = launch.run("stop_fl.sh")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for name in [SERVER, *SITES]:
        assert f"stopped {name} (pid {pids[name]})" in stopped.stdout, stopped.stdout + stopped.stderr
    # stop_fl.sh waits for each pid it stops: all are gone when it returns
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert not launch.record.exists()
    assert launch.read_pids() == {}
    assert stopped.stdout.index("stopped site-8") < stopped.stdout.index(f"stopped {SERVER}")  # clients first


def test_a_restart_waits_for_its_own_registrations_not_the_logs_of_earlier_runs(launch: Launch) -> None:
    first = launch.run("start_fl.sh", "1", str(launch.prod))
    assert first.returncode == 0, first.stdout + first.stderr
    assert launch.run("stop_fl.sh").returncode == 0
    settings = launch.prod / "site-1" / "local" / "site_settings.yml"
    settings.write_text("no_such_setting: 1\n")  # site-1 now refuses to start
    settings.chmod(0o600)
    try:
        again = launch.run("start_fl.sh", "1", str(launch.prod))
    finally:
        settings.unlink()
    assert again.returncode == 1, again.stdout + again.stderr  # the server log's earlier "registered" is not this run's
    assert "site-1" in again.stderr and "not everything started" in again.stderr
    assert launch.run("stop_fl.sh").returncode == 0


def test_more_clients_than_the_project_has_starts_nothing(launch: Launch) -> None:
    done = launch.run("start_fl.sh", "9", str(launch.prod))
    assert done.returncode == 2
    assert f"asked for 9 clients, {launch.prod} has 8" in done.stderr
    assert launch.read_pids() == {}
    assert not launch.record.exists()
    assert not list(launch.prod.glob("*/log.txt"))


@pytest.mark.parametrize("args", [[], ["eight"], ["-1"]], ids=["no args", "not a number", "negative"])
def test_bad_arguments_print_usage(launch: Launch, args: list[str]) -> None:
    done = launch.run("start_fl.sh", *args)
    assert done.returncode == 2
    assert "usage: " in done.stderr and "start_fl.sh N [PROD_DIR]" in done.stderr
    assert launch.read_pids() == {}
    assert not launch.record.exists()


def _kit_script(launch: Launch, kit: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDSEC": str(FEDSEC)}
    return subprocess.run(
        [str(launch.prod / kit / "startup" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )


def test_start_sh_tells_the_truth_and_stop_fl_sh_stops_the_real_process(launch: Launch) -> None:
    first = _kit_script(launch, SERVER, "start.sh")
    assert first.returncode == 0, first.stdout + first.stderr
    pid = launch.read_pids()[SERVER]
    assert f"started {SERVER} (pid {pid})" in first.stdout and " listening " in launch.server_log()

    second = _kit_script(launch, SERVER, "start.sh")
    assert second.returncode == 1
    assert f"{SERVER} is already running from this kit (pid {pid})" in second.stderr
    assert launch.read_pids()[SERVER] == pid and pid_alive(pid)

    (launch.prod / SERVER / "daemon.pid").write_text("1\n")  # a wrong record does not mislead stop_fl.sh
    stopped = _kit_script(launch, SERVER, "stop_fl.sh")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"stopped {SERVER} (pid {pid})" in stopped.stdout
    assert not pid_alive(pid)
    assert _kit_script(launch, SERVER, "stop_fl.sh").stdout.strip() == f"{SERVER} is not running"


def test_start_sh_of_a_server_whose_port_is_taken_fails(launch: Launch) -> None:
    import json
    import socket

    port = json.loads((launch.prod / SERVER / "startup" / "fed_server.json").read_text())["fl_port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = _kit_script(launch, SERVER, "start.sh")
    assert done.returncode == 1
    assert f"{SERVER} did not start: it exited at once" in done.stderr
    assert "cannot listen on" in done.stderr
    assert not (launch.prod / SERVER / "daemon.pid").exists()


def test_start_fl_sh_whose_server_cannot_listen_stops_the_sites_it_started_and_says_why(launch: Launch) -> None:
    import json
    import socket

    port = json.loads((launch.prod / SERVER / "startup" / "fed_server.json").read_text())["fl_port"]
    with socket.socket() as taken:  # the sites start with the server, before it fails to bind
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = launch.run("start_fl.sh", "2", str(launch.prod))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot listen on" in done.stderr  # the end of the server's log, whether it died before or after the sites
    assert "the server exited" in done.stderr or "the server did not start" in done.stderr
    assert pids_running(f"--kit {launch.prod}/") == []  # nothing it started runs
    assert [p.name for p in launch.prod.glob("*/daemon.pid")] == []
    assert not launch.record.exists()


def test_ctrl_c_on_start_fl_sh_stops_what_it_started(launch: Launch, tmp_path: Path) -> None:
    slow = tmp_path / "slow-fedsec"  # a launch that takes long to return, so the interrupt lands mid-start
    slow.write_text(f'#!/usr/bin/env bash\n"{FEDSEC}" "$@"\n[ "$1" = launch ] && sleep 60\nexit 0\n')
    slow.chmod(0o755)
    proc = subprocess.Popen(
        [str(launch.here / "start_fl.sh"), "2", str(launch.prod)],
        env={**os.environ, "FEDSEC": str(slow)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: len(launch.read_pids()) == 3, 120, "the server and two sites started")
        pids = launch.read_pids()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=600)  # a bound for a hang, not a speed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted; stopping what was started" in err
    assert [name for name, pid in pids.items() if pid_alive(pid) and str(launch.prod) in pid_cmdline(pid)] == []
    assert not launch.record.exists()


def test_a_project_with_server_replicas_is_refused_naming_them_and_starts_nothing(tmp_path: Path) -> None:
    replicas = [
        {"name": name, "host": "127.0.0.1", "fl_port": free_port(), "admin_port": free_port()}
        for name in ("server1-a", "server1-b")
    ]
    launch = Launch(tmp_path, provision_secure(tmp_path, replicas=replicas))
    refused = launch.run("start_fl.sh", "2", str(launch.prod))
    assert refused.returncode == 2
    assert "2 server replicas (server1-a server1-b)" in refused.stderr
    assert "start each with its kit's startup/start.sh" in refused.stderr
    assert launch.read_pids() == {}
    assert not launch.record.exists()
