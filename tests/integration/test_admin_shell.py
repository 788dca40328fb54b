"""`fedsec admin` against a real federation: the interactive shell in a pty, and -c / piped stdin without one."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pexpect
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from tests.integration.harness import ADMIN, Federation

SCRIPT = Path(__file__).parent / "scripts" / "linear_client.py"
REPO = Path(__file__).resolve().parents[2]
PROMPT = f"{ADMIN}>"  # the terminal shows the trailing space as a cursor move
TIMEOUT = 30


def linear_job(tmp: Path, *args: str, rounds: int, min_clients: int = 2) -> Path:
    initial = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}
    recipe = FedAvgRecipe("linear", initial, SCRIPT, rounds, min_clients, script_args=list(args))
    return recipe.export(tmp / f"job-{len(list(tmp.glob('job-*')))}")


def admin_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"  # the pty never answers a cursor-position request
    env["TERM"] = "xterm"
    return env


@pytest.fixture
def shell(federation: Federation) -> Iterator[pexpect.spawn]:
    """The admin shell in a pty, logged in to a started federation; terminated by the fixture in any case."""
    federation.start_all()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "fedsec", "admin", "--kit", str(federation.admin_kit)],
        cwd=str(REPO),
        env=admin_env(),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 250),
    )
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()


def new_job_id(child: pexpect.spawn) -> str:
    child.expect(r"submitted job ([0-9A-Za-z-]+)\r?\n")
    job_id: str = child.match.group(1)
    child.expect_exact(PROMPT)
    return job_id


# a generous heartbeat timeout: these tests are about the shell, not about sites coming and going
@pytest.mark.federation(heartbeat_timeout=30.0)
def test_interactive_shell(shell: pexpect.spawn, federation: Federation, tmp_path: Path) -> None:
    kit = federation.admin_kit
    shell.expect(rf"logged in as {re.escape(ADMIN)} \(project_admin\) to project itest at [\w.-]+:\d+")
    shell.expect_exact(PROMPT)

    # a slow job, aborted by an id completed with Tab from its first 4 characters
    shell.sendline(f"submit_job {linear_job(tmp_path, '--sleep', '20', rounds=3)}")
    slow = new_job_id(shell)
    shell.send(f"abort_job {slow[:4]}\t")
    shell.expect_exact(slow[4:])  # the completion filled in the rest of the id
    shell.send("\r")
    shell.expect_exact(f"job {slow}: finished:aborted")
    shell.expect_exact(PROMPT)
    shell.sendline("list_jobs")
    shell.expect(r"JOB ID\s+NAME\s+STATUS\s+ROUND\s+SUBMITTER\s+SUBMITTED\s+DURATION")
    shell.expect(rf"{slow}\s+linear\s+finished:aborted\s")
    shell.expect_exact(PROMPT)

    # a quick job, followed to its end, then downloaded into the kit's transfer/
    shell.sendline(f"submit_job {linear_job(tmp_path, rounds=2)}")
    quick = new_job_id(shell)
    with Session(kit) as s:
        info = s.wait_for_job(quick, timeout=90, poll=0.5)
    assert info.status == "finished:completed", info.reason
    shell.sendline(f"get_job_meta {quick[:8]}")
    shell.expect(r"status:\s+finished:completed")
    shell.expect_exact(PROMPT)
    shell.sendline(f"download_job {quick}")
    shell.expect_exact(f"downloaded job {quick} to {kit / 'transfer' / quick}")
    shell.expect_exact(PROMPT)
    assert (kit / "transfer" / quick / "global_model.fsa").is_file()

    # errors are one line and the shell goes on
    shell.sendline("lst_jobs")
    shell.expect_exact("error: unknown command 'lst_jobs' (did you mean 'list_jobs'?)")
    shell.expect_exact(PROMPT)
    shell.sendline("abort_job no-such-job")
    shell.expect(r"error: abort_job: [^\r\n]+\r?\n")
    assert "Traceback" not in (shell.before or "")
    shell.expect_exact(PROMPT)

    # shutdown asks first; anything but y keeps everything running
    shell.sendline("shutdown client site-3")
    shell.expect_exact("shut down site-3? [y/N]")
    shell.sendline("n")
    shell.expect_exact("not shut down")
    shell.expect_exact(PROMPT)

    shell.sendline("bye")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 0
    assert federation.procs["site-3"].poll() is None

    history = kit / ".fedsec_admin_history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert f"\n+abort_job {slow}\n" in history.read_text()  # what ran was the completed id


def test_ctrl_d_leaves(shell: pexpect.spawn) -> None:
    shell.expect_exact(PROMPT)
    shell.sendeof()
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 0


def admin(federation: Federation, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsec", "admin", "--kit", str(federation.admin_kit), *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=admin_env(),
        timeout=60,
    )


@pytest.mark.federation(heartbeat_timeout=30.0)
def test_non_interactive(federation: Federation) -> None:
    federation.start_all()

    done = admin(federation, "-c", "list_jobs")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["JOB", "ID", "NAME", "STATUS", "ROUND", "SUBMITTER", "SUBMITTED", "DURATION"]

    done = admin(federation, "-c", "version", "-c", "lst_jobs", "-c", "list_clients")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown command 'lst_jobs' (did you mean 'list_jobs'?)"
    assert done.stdout.startswith("server: ") and "SITE" not in done.stdout.splitlines()[0]

    done = admin(federation, "-c", "get_job_meta")
    assert done.returncode == 2 and done.stderr.startswith("error: usage: get_job_meta ID")

    done = admin(federation, "-c", "abort_job no-such-job")
    assert done.returncode == 1 and done.stderr.startswith("error: abort_job: ")
    assert "Traceback" not in done.stderr

    done = admin(federation, stdin="# piped\nlist_clients\n\ncheck_status client site-1\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["SITE", "ORG"]
    assert [line.split()[0] for line in lines[1:4]] == ["site-1", "site-2", "site-3"]
    assert lines[4].split()[:3] == ["SITE", "ORG", "ALIVE"] and lines[5].split()[:3] == ["site-1", "acme", "yes"]
    assert "\x1b" not in done.stdout + done.stderr and PROMPT not in done.stdout + done.stderr
