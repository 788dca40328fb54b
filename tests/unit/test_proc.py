"""fedsec._proc: a child whose parent dies before its death signal is armed does not live on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedsec import _proc


def test_child_of_a_living_parent_runs() -> None:
    proc = subprocess.Popen(["true"], preexec_fn=_proc._die_with(os.getpid()))  # noqa: PLW1509
    assert proc.wait(60) == 0


def test_child_orphaned_before_the_signal_is_armed_exits_instead_of_running() -> None:
    # a parent pid that is not the child's parent is what the child sees when its parent
    # died between fork and prctl: it must stop there, never exec the command
    proc = subprocess.Popen(["sleep", "600"], preexec_fn=_proc._die_with(os.getpid() + 1_000_000))  # noqa: PLW1509
    assert proc.wait(60) == 1


def test_start_lowers_a_background_child_priority_and_can_give_it_a_pipe(tmp_path: Path) -> None:
    script = "import os, sys; print(os.nice(0), sys.stdin.readline().strip(), flush=True)"
    proc = _proc.start(
        [sys.executable, "-c", script], cwd=tmp_path, env={}, log_path=tmp_path / "log", nice=7, stdin_pipe=True
    )
    assert proc.stdin is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.close()
    assert proc.wait(30) == 0
    assert (tmp_path / "log").read_text().split() == [str(os.nice(0) + 7), "hello"]
