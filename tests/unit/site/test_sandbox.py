"""The sandbox argv: what a job's bubblewrap binds, and that the kit is never one of them."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedsec.errors import JobError
from fedsec.site import sandbox
from fedsec.site.settings import Isolation
from tests.integration.harness import pids_running, wait_until

REPO = Path(__file__).resolve().parents[3]


def _binds(argv: list[str]) -> dict[str, str]:
    """dest -> kind ('ro', 'rw', 'tmpfs') for every mount in argv."""
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg in ("--ro-bind", "--ro-bind-try"):
            out[argv[i + 2]] = "ro"
        elif arg == "--bind":
            out[argv[i + 2]] = "rw"
        elif arg == "--tmpfs":
            out[argv[i + 1]] = "tmpfs"
    return out


def _mounts(tmp_path: Path) -> sandbox.JobMounts:
    kit = tmp_path / "site-1"
    job = kit / "jobs" / "j1"
    return sandbox.JobMounts(job / "job", job / "work", kit / "run" / "j1.sock", kit, (tmp_path / "data",))


def test_binds_only_the_whitelist(tmp_path: Path) -> None:
    m = _mounts(tmp_path)
    python = (Path("/opt/py"), Path("/opt/venv"))
    argv = sandbox.bwrap_argv(["python", "x.py"], m, python=python)
    binds = _binds(argv)
    assert "/" not in binds
    assert binds["/usr"] == "ro" and binds["/opt/py"] == "ro" and binds["/opt/venv"] == "ro"
    assert binds[str(m.code)] == "ro" and binds[str(tmp_path / "data")] == "ro"
    assert binds[str(m.work)] == "rw" and binds[str(m.socket)] == "rw"
    assert binds["/tmp"] == "tmpfs"
    kit = str(m.kit_root)
    assert not any(
        dest == kit or dest.startswith(kit + "/startup") or dest.startswith(kit + "/tracking") for dest in binds
    )
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--uid") + 1] != "0"
    assert argv[-3:] == ["--", "python", "x.py"]


def test_kit_under_a_bound_folder_is_covered_before_the_job_is_bound(tmp_path: Path) -> None:
    m = _mounts(tmp_path)
    argv = sandbox.bwrap_argv(["python"], m, python=(tmp_path,))  # e.g. a venv folder that holds the kits
    covered = argv.index("--tmpfs", argv.index("--tmpfs") + 1)  # the second tmpfs, after /tmp
    assert argv[covered + 1] == str(m.kit_root)
    assert argv.index(str(m.code)) > covered and argv.index(str(m.work)) > covered


def test_python_mounts_hold_the_package_not_its_repository() -> None:
    mounts = sandbox.python_mounts()
    package = sandbox.fedsec_package_dir()
    assert package in mounts and package.parent not in mounts
    assert all(p.is_dir() for p in mounts)


def test_env_has_nothing_of_the_parent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSEC_HE_CONTEXT", "/kit/startup/client_context.tenseal")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    env = sandbox.script_env({"FEDSEC_SITE": "site-1"}, tmp_path, [tmp_path / "custom"])
    assert env["HOME"] == str(tmp_path) and env["FEDSEC_SITE"] == "site-1"
    assert "FEDSEC_HE_CONTEXT" not in env and "AWS_SECRET_ACCESS_KEY" not in env


def test_isolation_modes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-bwrap"
    with caplog.at_level(logging.WARNING):
        assert sandbox.use_sandbox(Isolation.AUTO, "j1", missing) is False
    assert "install bubblewrap" in caplog.text
    with pytest.raises(JobError, match="requires isolation with bubblewrap"):
        sandbox.use_sandbox(Isolation.BWRAP, "j1", missing)
    assert sandbox.use_sandbox(Isolation.NONE, "j1") is False
    if sandbox.BWRAP.exists():
        assert sandbox.use_sandbox(Isolation.AUTO, "j1") is True
        assert sandbox.use_sandbox(Isolation.BWRAP, "j1") is True


def test_the_jobs_environment_is_never_on_the_command_line(tmp_path: Path) -> None:
    """/proc/PID/cmdline is readable by every user of the host: the job's token must not be in bwrap's argv."""
    kit = tmp_path / "kit"
    code, work, sockets = kit / "jobs" / "j1" / "job", kit / "jobs" / "j1" / "work", kit / "run" / "j1"
    for folder in (code, work, sockets):
        folder.mkdir(parents=True)
    token = "tok-" + "5ecret" * 4
    env = sandbox.script_env({"FEDSEC_JOB_TOKEN": token}, work, [code])
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    argv = sandbox.bwrap_argv([sys.executable, "-c", show], sandbox.JobMounts(code, work, sockets, kit, ()))
    assert not any(token in arg for arg in argv)
    if not sandbox.BWRAP.exists():
        return
    done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout)
    seen.pop("PWD", None)  # bwrap's --chdir sets it
    assert seen == env  # the job gets exactly its environment, from bwrap's own


_SITE = """
import sys
from pathlib import Path
from fedsec import _proc
from fedsec.site import sandbox
work, code, sockets, kit, marker = (Path(a) for a in sys.argv[1:6])
mounts = sandbox.JobMounts(code, work, sockets, kit, ())
argv = sandbox.guarded(sandbox.bwrap_argv(["/usr/bin/sleep", str(marker)], mounts))
log = work / "log.txt"
_proc.start(argv, cwd=work, env={"PATH": "/usr/bin:/bin"}, log_path=log, death_signal=sandbox.GUARD_SIGNAL)
"""  # a site that starts a sandboxed job and dies at once, while bubblewrap is still setting up


def test_a_site_that_dies_while_bubblewrap_starts_leaves_no_process(tmp_path: Path) -> None:
    # bwrap run as root clears the death signal its parent armed before it arms its own; a site
    # killed in that window left bwrap orphaned for good (the CI failure of stop 17)
    if not sandbox.BWRAP.exists():
        return
    kit = tmp_path / "kit"
    code, work, sockets = kit / "jobs" / "j1" / "job", kit / "jobs" / "j1" / "work", kit / "run" / "j1"
    for folder in (code, work, sockets):
        folder.mkdir(parents=True)
    for attempt in range(8):
        marker = f"600.{os.getpid()}{attempt}"
        site = [sys.executable, "-c", _SITE, str(work), str(code), str(sockets), str(kit), marker]
        subprocess.run(site, check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        left = functools.partial(pids_running, marker)
        try:
            wait_until(lambda: not left(), 120, "the job's processes to die with their site")  # noqa: B023
        finally:
            for pid in pids_running(marker):
                os.kill(pid, signal.SIGKILL)


def test_a_guarded_command_reads_the_stdin_it_was_given() -> None:
    # the warm launcher hands its job over on stdin; a shell's background command would read /dev/null
    done = subprocess.run(
        sandbox.guarded(["cat"]), input=b"the job's spec", capture_output=True, timeout=60, check=True
    )
    assert done.stdout == b"the job's spec"
