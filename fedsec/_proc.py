"""Child processes: start with a recorded pid, stop by pid (TERM, then KILL).

Children get their own process group and die with their parent (Linux
PR_SET_PDEATHSIG), so a parent killed with -9 leaves no job process behind.
Nothing here looks processes up by name.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


try:  # loaded here, not in the child: a forked child of a threaded parent must not dlopen
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with(parent: int, nice: int = 0, death_signal: int = signal.SIGKILL) -> Callable[[], None]:
    """A pre-exec hook that arms the death signal, then checks the parent did not die before it was armed."""

    def hook() -> None:  # runs in the child between fork and exec: keep it minimal
        if nice:
            os.nice(nice)
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, death_signal)
        if os.getppid() != parent:  # orphaned between fork and prctl: the signal will never come
            os._exit(1)
        os.setpgrp()

    return hook


def start(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    die_with_parent: bool = True,
    stdin_pipe: bool = False,
    nice: int = 0,
    death_signal: int = signal.SIGKILL,
) -> subprocess.Popen[bytes]:
    """Start argv with stdout and stderr appended to log_path; return the process.

    stdin_pipe: give it a pipe from this process as stdin (proc.stdin) instead of /dev/null.
    nice: lower its CPU priority by this much (background work that must not slow what the user waits for).
    death_signal: what it gets when this process dies (SIGTERM for a wrapper that must pass it on, e.g.
    fedsec.site.sandbox.guarded).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with(os.getpid(), nice, death_signal) if die_with_parent else os.setpgrp,  # noqa: PLW1509
            close_fds=True,
        )
    log.info("started pid=%d argv0=%s", proc.pid, Path(argv[0]).name)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> int:
    """TERM the process group of proc, KILL it after grace seconds; return the exit status."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    else:
        _signal_group(proc.pid, signal.SIGKILL)  # reap stragglers of a finished leader
    return proc.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        log.warning("cannot signal process group pid=%d", pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until pid no longer exists; return whether it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def tail(path: Path, limit: int) -> str:
    """The last limit bytes of a log file as text (for error reports)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def private_files() -> None:
    """Make every file this process (and its children) creates 0600 and every folder 0700.

    The server and site parents call it first: job records, results, MLflow's store and
    artifacts, spools and logs are for the kit's owner only, whichever library writes them.
    """
    os.umask(0o077)


def lock_kit(run_dir: Path, what: str) -> int:
    """Hold an exclusive lock so only one process runs from a kit; return the fd (keep it open).

    Raises ConfigError naming the pid that holds it.
    """
    import fcntl

    from fedsec.errors import ConfigError

    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = run_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"{what} is already running from this kit (pid {holder})") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def host_info() -> dict[str, object]:
    """What an admin's sys_info shows about this machine and process."""
    import platform
    import sys

    from fedsec import __version__

    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "fedsec": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "pid": os.getpid(),
    }


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc() -> None:
    """Make glibc return memory to the system: few arenas, large blocks mmap'd.

    Long-lived fedsec processes move many short-lived multi-MiB buffers between
    threads; with glibc's defaults they pile up in per-thread arenas and the
    resident size only grows. Call once at the start of a process, before threads.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_ARENA_MAX, 2)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 256 << 10)


def end_process(code: int, release: Callable[[], None] = lambda: None) -> NoReturn:
    """End this process with exit status code as the interpreter would, minus the teardown of its modules.

    In the interpreter's order (Py_FinalizeEx): threading's shutdown (thread pools told to stop,
    the threads that are not daemons joined), the atexit handlers (logging's flush,
    weakref.finalize, the client's last events), then release() (the caller drops what it still
    holds: fedsec.client.runscript clears the script's globals and modules, as the interpreter's
    teardown would) and a garbage collection, so the finalisers of those objects run (a file's
    flush, a zip file's directory), stdout and stderr flushed, and _exit. What is skipped is the
    teardown of every other module and the C++ static destructors: with torch or MLflow loaded
    that alone costs 0.6-1 s of CPU per process, for nothing a job keeps.
    """
    getattr(threading, "_shutdown")()  # noqa: B009 - the interpreter's own step: executors stopped, threads joined
    atexit._run_exitfuncs()
    release()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken: the interpreter would carry on too
            pass
    os._exit(code)
