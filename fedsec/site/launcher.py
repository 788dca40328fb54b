"""A site's warm job launcher: one job process made ready before its job exists, replaced once taken.

With `warm_launcher: true` in the site settings the site keeps one *slot*
ready: a job folder `<kit>/jobs/.warm-XXXX/` (its `work/`, its `log.txt`), a
socket folder of its own, and a process started in exactly the sandbox a job
gets (fedsec.site.sandbox: only that slot's folders, the data sets, Python;
never the kit, its keys, HE context or spool, never another job's folder)
running fedsec.client.warm, which imports the ML framework and waits on a pipe.
When a job comes, the runner renames the slot folder to `<kit>/jobs/<job_id>`
(the sandbox's binds follow the folder), unpacks the job into it, opens the
job's endpoint in the slot's socket folder and writes the script, its
arguments and the job's own environment (its token among them) into the pipe.
A new slot is started at once for the next job.

Why a ready sandbox per job and not a forkserver: bubblewrap fixes a sandbox's
mounts when it starts, so one shared process cannot give each job its own job
folder and socket and hide the others'; and a fork of a shared process would
inherit whatever that process holds. A slot is one fresh process that no job
code ran in, used once: the isolation of a cold start, without its imports.
Its cost is one idle process with the framework imported (bench/idle_bench.py
reports it), hence off by default. This module never imports the framework.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsec import _proc
from fedsec.errors import JobError
from fedsec.site import sandbox
from fedsec.site.settings import SiteSettings
from fedsec.transport.local import socket_dir

log = logging.getLogger(__name__)

SLOT_PREFIX = ".warm-"  # a slot's folder in <kit>/jobs: never a job id (ids are safe names, no leading dot)
WARM_MODULE = "fedsec.client.warm"


@dataclass
class Slot:
    """One ready job process and the folders bound into its sandbox."""

    folder: Path  # becomes the job's folder: work/ and log.txt are in it, the job is unpacked into job/
    inside: Path  # the folder's path as its sandbox sees it: where it was when the sandbox started
    sockets: Path  # the job's socket is made in it
    proc: subprocess.Popen[bytes]
    datasets: tuple[Path, ...]  # what its sandbox binds: a job needing others takes no slot

    def fits(self, settings: SiteSettings) -> bool:
        """Whether a job started with these settings may run in this slot (same sandbox, process alive)."""
        wanted = tuple(Path(p) for p in settings.datasets.values())
        return self.proc.poll() is None and wanted == self.datasets

    def stop(self) -> None:
        """Stop its process and delete its socket folder (its job folder stays, as a failed job's does)."""
        _proc.stop(self.proc, grace=0.5)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        shutil.rmtree(self.sockets, ignore_errors=True)

    def discard(self) -> None:
        """Stop its process, delete its folders (a slot no job took)."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class WarmLauncher:
    """Keeps one Slot ready for the next job of a site."""

    def __init__(self, kit_root: Path, jobs_dir: Path) -> None:
        self._kit_root = kit_root
        self._jobs_dir = jobs_dir
        self._lock = threading.Lock()
        self._slot: Slot | None = None
        self._closed = False
        self._told_cold = False
        for stale in jobs_dir.glob(SLOT_PREFIX + "*") if jobs_dir.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)  # a slot of an earlier run of this site

    def fill(self, settings: SiteSettings, isolated: bool) -> None:
        """Start a slot unless one is ready; logs (never raises) when it cannot.

        Only sandboxed: outside bubblewrap the paths a ready process was started with would not follow
        its folder's rename to the job's, so without it every job starts cold.
        """
        with self._lock:
            if self._closed or self._slot is not None:
                return
            if not isolated:
                if not self._told_cold:
                    log.warning("warm launcher: needs bubblewrap isolation; jobs start a new process each")
                self._told_cold = True
                return
            try:
                self._slot = self._spawn(settings)
            except (OSError, JobError) as exc:
                log.warning("warm launcher: cannot start a ready job process: %s", exc)
                return
            pid = self._slot.proc.pid
        log.info("warm launcher: started the next job's process pid=%d", pid)

    def refresh(self, settings: SiteSettings, isolated: Callable[[], bool]) -> None:
        """Replace a ready process that exited or no longer fits settings; start one if none is ready.

        isolated: whether a job started now is sandboxed (asked only when a process is to be started).
        """
        with self._lock:
            stale = self._slot if self._slot is not None and not self._slot.fits(settings) else None
            if stale is not None:
                self._slot = None
            ready = self._slot is not None
        if stale is not None:
            log.info("warm launcher: the next job's process exited or no longer fits the site settings; replacing it")
            stale.discard()
        if not ready and not self._told_cold:  # told it cannot (no bubblewrap): not asked again until a restart
            self.fill(settings, isolated())

    def drop(self) -> None:
        """Stop the ready process, if any (the settings no longer ask for one)."""
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is not None:
            log.info("warm launcher: stopping the ready job process pid=%d", slot.proc.pid)
            slot.discard()

    def take(self, settings: SiteSettings, isolated: bool) -> Slot | None:
        """The ready slot when it fits a job started with these settings, else None (it is replaced)."""
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is None:
            return None
        if isolated and slot.fits(settings):
            return slot
        log.info("warm launcher: the ready job process no longer fits the site settings (or exited); replacing it")
        slot.discard()
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            slot, self._slot = self._slot, None
        if slot is not None:
            slot.discard()

    def _spawn(self, settings: SiteSettings) -> Slot:
        self._jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=SLOT_PREFIX, dir=self._jobs_dir))  # 0700
        sockets = Path(tempfile.mkdtemp(prefix="w", dir=socket_dir(self._kit_root / "run", "warm")))
        try:
            work = folder / "work"
            work.mkdir(mode=0o700)
            custom = folder / "job" / "app" / "custom"  # where the job's code will be
            env = sandbox.script_env({}, work, [custom, sandbox.fedsec_package_dir().parent])
            command = [sys.executable, "-P", "-m", WARM_MODULE]
            datasets = tuple(Path(p) for p in settings.datasets.values())
            # the whole slot folder read-only (the job is unpacked into it later), its work/ read-write
            mounts = sandbox.JobMounts(folder, work, sockets, self._kit_root, datasets)
            command = sandbox.guarded(sandbox.bwrap_argv(command, mounts))
            log_path = folder / "log.txt"
            proc = _proc.start(
                command, cwd=work, env=env, log_path=log_path, stdin_pipe=True, death_signal=sandbox.GUARD_SIGNAL
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(sockets, ignore_errors=True)
            raise
        return Slot(folder, folder, sockets, proc, datasets)


def hand_over(slot: Slot, line: bytes) -> None:
    """Give the slot's process its job (one line of fedsec.jobs.launch.JobSpec.encode()); raises JobError."""
    if slot.proc.stdin is None:
        raise JobError("the ready job process has no pipe to give it its job")
    try:
        slot.proc.stdin.write(line)
        slot.proc.stdin.flush()
    except OSError as exc:
        raise JobError(f"the ready job process exited before it got its job: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            slot.proc.stdin.close()
