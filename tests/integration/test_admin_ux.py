"""What an admin sees through Session and `fedsec admin`: an unreachable server, sites waited for, the shell."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pexpect
import pytest

from fedsec.api import JobInfo, RoundPrinter, Session
from fedsec.errors import UnreachableError
from fedsec.jobs import FedAvgRecipe
from tests.integration.harness import Federation, wait_until
from tests.integration.test_admin_shell import PROMPT, REPO, SCRIPT, admin_env

WAITING = "waiting for sites: 2 of 3 connected, site-3 missing"


def _server_address(federation: Federation) -> str:
    with Session(federation.admin_kit) as session:
        return session.server_address


def test_server_not_running(federation: Federation) -> None:
    """Provisioned, never started: the API and the shell name the server's address, not gRPC's text."""
    address = _server_address(federation)
    expected = f"cannot reach the server at {address} (is it running? see its log.txt)"
    with Session(federation.admin_kit, timeout=10) as session, pytest.raises(UnreachableError) as err:
        session.list_jobs()
    assert str(err.value) == expected
    with Session(federation.admin_kit, timeout=2) as session, pytest.raises(UnreachableError) as err:
        session.monitor_job("3f2a9c0e-1111-4a4a-9b9b-000000000001")  # waits for the server, in vain
    assert str(err.value) == expected

    done = subprocess.run(
        [sys.executable, "-m", "fedsec", "admin", "--kit", str(federation.admin_kit), "-c", "list_jobs"],
        check=False,
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=admin_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"fedsec: error: {expected}"
    assert "failed to connect" not in done.stderr and "Traceback" not in done.stderr


class _Lines(io.StringIO):
    """A stream written by the printer's thread and read by the test's."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


@pytest.mark.federation(heartbeat_timeout=30.0)
def test_waiting_for_sites(federation: Federation, tmp_path: Path) -> None:
    """A job that needs site-3 says so, through RoundPrinter and the shell's wait_job, until site-3 comes."""
    federation.start("server1")
    federation.start("site-1")
    federation.start("site-2")
    federation.wait_registered(["site-1", "site-2"])
    initial = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}
    sites = ["site-1", "site-2", "site-3"]
    recipe = FedAvgRecipe("linear", initial, SCRIPT, 1, 3, sites=sites)
    with Session(federation.admin_kit) as session:
        job_id = session.submit_job(recipe.export(tmp_path / "job"))

    printed = _Lines()
    ended: list[JobInfo] = []

    def follow() -> None:
        with Session(federation.admin_kit) as session:
            ended.append(session.monitor_job(job_id, RoundPrinter(printed, printed), timeout=300, poll=0.5))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    shell = pexpect.spawn(
        sys.executable,
        ["-m", "fedsec", "admin", "--kit", str(federation.admin_kit), "-c", f"wait_job {job_id}"],
        cwd=str(REPO),
        env=admin_env(),
        encoding="utf-8",
        timeout=60,
    )
    try:
        shell.expect_exact(WAITING)
        shell.expect_exact(WAITING)  # said again while nothing changes, not said once and then silence
        wait_until(lambda: WAITING in printed.text(), 60, "the printer's waiting line")
        federation.start("site-3")
        shell.expect(r"round 1/1: ")
        shell.expect_exact(f"job {job_id}: finished:completed")
        shell.expect(pexpect.EOF)
        shell.close()
        assert shell.exitstatus == 0
    finally:
        if shell.isalive():
            shell.terminate(force=True)
    follower.join(timeout=120)
    assert ended and ended[0].status == "finished:completed", printed.text()
    lines = printed.text().splitlines()
    assert lines.index(WAITING) < lines.index(next(line for line in lines if line.startswith("round 1/1: ")))


@pytest.mark.federation(heartbeat_timeout=30.0)
def test_shell_suggestions_json_and_confirmation(federation: Federation, tmp_path: Path) -> None:
    """Against a real server: a near-miss job id gets its suggestion, --json is one document per command,
    delete_job asks at a terminal and needs -y without one, show_stats names itself."""
    federation.start_all()
    initial = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}
    with Session(federation.admin_kit) as session:
        job_id = session.submit_job(FedAvgRecipe("linear", initial, SCRIPT, 1, 2).export(tmp_path / "job"))
        session.wait_for_job(job_id, timeout=120, poll=0.5)
    near = job_id[:7] + ("0" if job_id[7] != "0" else "1")  # 8 characters, the last one wrong

    done = _admin(federation, "-c", f"get_job_meta {near}")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"no such job (did you mean {job_id}?)"), done.stderr

    done = _admin(federation, "-c", f"show_stats {near}")
    assert done.returncode == 1 and done.stderr.startswith(f"error: show_stats: job {near}"), done.stderr

    done = _admin(federation, "-c", f"delete_job {job_id}")
    assert done.returncode == 2 and "deleting needs -y" in done.stderr

    done = _admin(federation, "--json", "-c", "list_clients", "-c", f"get_job_meta {job_id[:8]}", "-c", "lst_jobs")
    assert done.returncode == 2
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["command"], d["status"]) for d in docs] == [("list_clients", 0), ("get_job_meta", 0), ("lst_jobs", 2)]
    assert [c["name"] for c in docs[0]["result"]] == ["site-1", "site-2", "site-3"]
    assert docs[1]["result"]["job_id"] == job_id and docs[1]["result"]["status"] == "finished:completed"
    assert docs[2]["error"] == "unknown command 'lst_jobs' (did you mean 'list_jobs'?)"

    shell = pexpect.spawn(
        sys.executable,
        ["-m", "fedsec", "admin", "--kit", str(federation.admin_kit)],
        cwd=str(REPO),
        env=admin_env(),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 250),
    )
    try:
        shell.expect_exact(PROMPT)
        shell.sendline(f"delete_job {job_id}")
        shell.expect_exact(f"delete job {job_id} and its results? [y/N]")
        shell.sendline("n")
        shell.expect_exact("not deleted")
        shell.expect_exact(PROMPT)
        shell.sendline(f"delete_job {job_id}")
        shell.expect_exact("[y/N]")
        shell.sendline("y")
        shell.expect_exact(f"deleted job {job_id}")
        shell.expect_exact(PROMPT)
        shell.sendline("bye")
        shell.expect(pexpect.EOF)
    finally:
        if shell.isalive():
            shell.terminate(force=True)
        shell.close()
    with Session(federation.admin_kit) as session:
        assert [j.job_id for j in session.list_jobs()] == []


def _admin(federation: Federation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsec", "admin", "--kit", str(federation.admin_kit), *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=admin_env(),
        timeout=60,
    )
