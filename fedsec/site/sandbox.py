"""The sandbox a site runs each job's training script in: bubblewrap with a whitelist of mounts.

Job code is untrusted. Inside the sandbox the script sees only what it needs
to run Python: the system's /usr (and the merged-usr links), a few /etc
files, the Python installation and its site-packages, the fedsec package
folder (never the repository around it, where kits may live), its own job
code (read-only), its work folder (read-write), its own local socket and the
data sets the site operator listed (read-only). It runs as an unprivileged
uid in fresh user, pid, network, IPC and UTS namespaces with an empty
environment but for what the parent sets, and dies with its parent. The kit
(keys, HE context, spool, other jobs) is never mounted, and a tmpfs covers
it should it lie under a bound folder.

Root-owned 0600 files stay readable to the sandbox's mapped user, so nothing
is hidden by permissions: only what is mounted exists. This module builds
argv and decides the isolation mode; it starts nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsec.errors import JobError
from fedsec.site.settings import Isolation

log = logging.getLogger(__name__)

BWRAP = Path("/usr/bin/bwrap")
SANDBOX_UID = 65534  # nobody: the script's uid inside its user namespace
_MERGED_USR = ("/bin", "/lib", "/lib64", "/sbin")  # links into /usr on merged-usr systems, folders elsewhere
_ETC = (  # what Python, OpenSSL, time zones and user lookups read; each only when present
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
)
_PASS_ENV = ("LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # harmless tuning a site may set
NO_SANDBOX_WARNING = "job processes run with the site's own rights: install bubblewrap"


@dataclass(frozen=True)
class JobMounts:
    """What one job's sandbox binds besides the system and Python."""

    code: Path  # the unpacked job (read-only)
    work: Path  # the script's working folder (read-write)
    socket: Path  # the job's own local socket
    kit_root: Path  # never visible inside
    datasets: tuple[Path, ...] = ()  # read-only


def use_sandbox(isolation: Isolation, job_id: str, bwrap: Path = BWRAP) -> bool:
    """Whether to run a job under bubblewrap; raises JobError when it is required and missing."""
    present = bwrap.is_file() and os.access(bwrap, os.X_OK)
    if isolation is Isolation.NONE:
        log.warning("job=%s isolation: none in the site settings: %s", job_id, NO_SANDBOX_WARNING)
        return False
    if present:
        return True
    if isolation is Isolation.BWRAP:
        raise JobError(f"the site requires isolation with bubblewrap, but {bwrap} is not installed")
    log.warning("job=%s WARNING: %s not found: %s", job_id, bwrap, NO_SANDBOX_WARNING)
    return False


def python_mounts() -> tuple[Path, ...]:
    """The folders this Python needs, read-only: its prefixes, site-packages on sys.path, the fedsec package."""
    found: list[Path] = [Path(sys.base_prefix), Path(sys.prefix)]
    prefixes = tuple(found)
    for entry in sys.path:
        path = Path(entry or ".").absolute()
        if path.name in ("site-packages", "dist-packages") and path.is_dir():
            if not any(p == path or p in path.parents for p in prefixes):
                found.append(path)
    found.append(fedsec_package_dir())
    return tuple(dict.fromkeys(found))


def fedsec_package_dir() -> Path:
    """The folder of the fedsec package itself (not the repository that holds it)."""
    import fedsec

    return Path(fedsec.__file__).absolute().parent


def script_env(base: Mapping[str, str], work: Path, pythonpath: Sequence[Path]) -> dict[str, str]:
    """The whole environment of a job process: nothing of the parent's but a few harmless settings."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.update(
        {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath),
            "PYTHONUNBUFFERED": "1",
            "PYTHONNOUSERSITE": "1",
        }
    )
    env.update(base)
    return env


def bwrap_argv(
    command: Sequence[str],
    mounts: JobMounts,
    python: Sequence[Path] | None = None,
    bwrap: Path = BWRAP,
) -> list[str]:
    """argv that runs command under bubblewrap with only the mounts a job may see.

    The command's environment is bwrap's own: start bwrap with exactly the job's environment
    (script_env). It is never on bwrap's command line (no --setenv): /proc/PID/cmdline is readable
    by every user of the host, and the environment holds the job's token.
    """
    argv = [str(bwrap), "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in _MERGED_USR:
        path = Path(name)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            argv += ["--ro-bind", name, name]
    for name in _ETC:
        argv += ["--ro-bind-try", name, name]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108 - a private tmpfs in the sandbox
    bound = [Path("/usr")]
    for path in python_mounts() if python is None else python:
        argv += ["--ro-bind", str(path), str(path)]
        bound.append(path)
    for path in mounts.datasets:
        argv += ["--ro-bind", str(path), str(path)]
        bound.append(path)
    kit = mounts.kit_root.absolute()
    if any(b == kit or b in kit.parents for b in bound):
        argv += ["--tmpfs", str(kit)]  # a bound folder holds the kit: hide it, then bind the job's own parts
    argv += ["--ro-bind", str(mounts.code), str(mounts.code)]
    argv += ["--bind", str(mounts.work), str(mounts.work)]
    argv += ["--bind", str(mounts.socket), str(mounts.socket)]
    argv += ["--chdir", str(mounts.work), "--", *command]
    return argv


GUARD_SIGNAL = signal.SIGTERM  # the death signal to start a guarded command with (fedsec._proc.start)
# On TERM: freeze bwrap (it forks no more), kill its children (the sandbox's pid-namespace init, whose
# end ends every process in the sandbox), then bwrap itself.
_GUARD = """trap 'p=$!
if [ -n "$p" ]; then
  kill -STOP "$p" 2>/dev/null
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do kill -KILL "$c" 2>/dev/null; done
  kill -KILL "$p" 2>/dev/null
fi
exit 143' TERM
exec 3<&0
"$@" <&3 3<&- &
wait "$!"
"""


def guarded(argv: Sequence[str]) -> list[str]:
    """argv behind a shell that kills it when the site dies: start it with death_signal=GUARD_SIGNAL.

    bubblewrap run as root changes its capabilities at start, which clears the death signal its
    parent armed, and arms its own only after setting up the sandbox: a site killed in between
    left bwrap running with no parent, waiting forever (and bwrap killed in that window leaves its
    sandbox's first process orphaned the same way). The shell keeps the death signal (it changes no
    credentials), and on it stops bwrap, kills bwrap's children, then bwrap. The shell's trap is set
    before bwrap starts; stdin is passed on through fd 3 (a background command's own would be /dev/null).
    """
    return ["/bin/sh", "-c", _GUARD, "fedsec-job", *argv]
