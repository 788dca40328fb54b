"""`fedsec poc N` on a fresh folder: provisioned, everything started and registered; `fedsec poc stop`: all gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PocFolder, pid_alive, pid_cmdline


@pytest.fixture
def poc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PocFolder]:
    folder = PocFolder(tmp_path / "my-poc")
    request.node._federation = folder  # conftest.py prints its logs when the test fails
    try:
        yield folder
    finally:
        folder.kill_all()


def test_poc_start_then_stop_leaves_nothing_running(poc: PocFolder) -> None:
    started = poc.run("2")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"provisioned and started a poc federation in {poc.folder}" in started.stdout
    assert "the server and 2 sites, all registered" in started.stdout
    assert f"admin kit: {poc.admin_kit}" in started.stdout
    assert f"python myjob/job.py --startup_kit {poc.admin_kit}" in started.stdout
    assert f"fedsec poc stop --dir {poc.folder}" in started.stdout

    pids = poc.pids()
    assert sorted(pids) == ["server", "site-1", "site-2"]  # not the admin kit
    for name, pid in pids.items():
        kind = "server" if name == "server" else "client"
        assert pid_alive(pid), name
        assert f"{kind} --kit {poc.prod / name}" in pid_cmdline(pid)
    server_log = (poc.prod / "server" / "log.txt").read_text()
    assert "site=site-1 registered " in server_log and "site=site-2 registered " in server_log

    again = poc.run("2")
    assert again.returncode == 2
    assert f"poc {poc.folder} runs already: server (pid {pids['server']})" in again.stderr
    assert f"stop it with: fedsec poc stop --dir {poc.folder}" in again.stderr
    assert poc.pids() == pids  # nothing new was started

    stopped = poc.run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for name, pid in pids.items():
        assert f"stopped {name} (pid {pid})" in stopped.stdout
    assert stopped.stdout.index("stopped site-1") < stopped.stdout.index("stopped server")  # sites first
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert poc.pids() == {}
    assert poc.run("stop").stdout.startswith("nothing to stop")

    # the same folder starts again from the same kits; a different size is refused
    other = poc.run("3")
    assert other.returncode == 2
    assert "holds a poc of 2 sites; for 3, give another --dir or delete it" in other.stderr
    restarted = poc.run("2")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert restarted.stdout.startswith(f"started a poc federation in {poc.folder}")
    new_pids = poc.pids()
    assert sorted(new_pids) == sorted(pids) and all(pid_alive(p) for p in new_pids.values())
    assert poc.run("stop").returncode == 0
    assert [name for name, pid in new_pids.items() if pid_alive(pid)] == []


def test_poc_with_he_provisions_the_contexts(poc: PocFolder) -> None:
    started = poc.run("1", "--he")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "a poc federation with homomorphic encryption" in started.stdout
    assert (poc.prod / "server" / "startup" / "server_context.tenseal").is_file()
    assert (poc.prod / "site-1" / "startup" / "client_context.tenseal").is_file()
    pids = poc.pids()
    assert poc.run("stop").returncode == 0
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []


def test_a_folder_that_is_not_a_poc_is_refused(poc: PocFolder) -> None:
    poc.folder.mkdir()
    (poc.folder / "notes.txt").write_text("mine")
    done = poc.run("2")
    assert done.returncode == 2
    assert (
        done.stderr
        == f"fedsec: error: poc: {poc.folder} exists and is not a poc folder (no project.yml); give another --dir\n"
    )
    assert sorted(p.name for p in poc.folder.iterdir()) == ["notes.txt"]
