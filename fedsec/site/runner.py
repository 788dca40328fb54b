"""Job processes on a site: fetch a job's archive, unpack and check it, start its script, stop it.

Each job runs as `python SCRIPT ARGS` in <kit>/jobs/<job_id>/work, with the
job's custom code on PYTHONPATH and its own local socket in the environment,
inside a bubblewrap sandbox (fedsec.site.sandbox) that sees nothing of the kit
unless the site operator opted out. With `warm_launcher: true` in the site
settings the script runs instead in a process made ready before the job came
(fedsec.site.launcher: the same sandbox, the framework already imported). A job
whose script exits is reported to the server (finished, or failed with the end
of its log). Job folders older than
the operator's job_retention_days are deleted at the site's start and then
daily (retention_loop); a running job's folder never is.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsec import _fs, _proc, limits
from fedsec.errors import AuthError, FedsecError, JobError
from fedsec.site import launcher, sandbox
from fedsec.site.hekey import HEKey
from fedsec.site.logship import LogShipper
from fedsec.site.policy import load_site_policy
from fedsec.site.settings import SiteSettings, load_site_settings
from fedsec.site.transfer import GaveUpError

if TYPE_CHECKING:  # the job-time modules (archives, job folders, replay records) come with the first job (start)
    from cryptography import x509

    from fedsec.jobs.signing import JobSignature
    from fedsec.site.local import LocalEndpoints

log = logging.getLogger(__name__)

Report = Callable[[str, bool, str, str], None]  # (job_id, failed, error text, log tail)
RETENTION_CHECK_SECONDS = 86400.0  # how often old job folders are looked for
RUN_SCRIPT = "fedsec.client.runscript"  # runs a script as `python SCRIPT ARGS` would, and ends without teardown
WARM_CHECK_SECONDS = 30.0  # how often the warm launcher's ready process is checked (alive, fits the settings)


@dataclass
class _Job:
    job_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stopping: bool = False
    sockets: Path | None = None  # a warm job process's own socket folder, deleted when it ends


class JobRunner:
    """Starts, watches and stops the training processes of one site."""

    def __init__(
        self,
        kit_root: Path,
        site: str,
        endpoints: LocalEndpoints,
        he_key: HEKey,
        report: Report,
        root_ca: Callable[[], x509.Certificate],
        logs: LogShipper | None = None,
    ) -> None:
        """root_ca: the kit's root CA as its signature check saw it, read when the first job's signature is checked
        (the X.509 code is job-time code too). logs: where each run's log is sent to the server while it runs (None:
        only the tail, at its end)."""
        self._jobs_dir = kit_root / "jobs"
        self._kit_root = kit_root
        self._root_ca = root_ca
        self._site = site
        self._endpoints = endpoints
        self._he_key = he_key
        self._report = report
        self._logs = logs
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._failed: set[str] = set()  # jobs that could not start: not retried until reassigned
        self._ended: set[str] = set()  # jobs whose script exited: not started again (and their folder kept)
        self._warm = launcher.WarmLauncher(kit_root, self._jobs_dir)

    def running(self) -> set[str]:
        with self._lock:
            return set(self._jobs)

    def start(self, job_id: str, archive: bytes, signature: JobSignature) -> None:
        """Check a job's signature and this site's policy, unpack it, start its script.

        Raises AuthError when the job may not run here, JobError when it is unusable.
        Nothing is unpacked before the signature and the policy have been checked.
        """
        from fedsec.jobs.signing import verify_archive  # job-time code: an idle site never loads it
        from fedsec.site import replay

        signer = verify_archive(archive, signature, self._root_ca(), f"job {job_id}", job_id=job_id)
        policy = load_site_policy(self._kit_root)
        policy.check(signer, self._site)
        replay.check_start(self._kit_root, job_id, signature.submit_time, policy.max_job_age)
        settings = load_site_settings(self._kit_root)
        isolated = sandbox.use_sandbox(settings.isolation, job_id)
        slot = self._warm.take(settings, isolated) if settings.warm_launcher else None
        job_dir = self._jobs_dir / _safe_id(job_id)
        try:
            proc, log_path, socket = self._launch(job_id, job_dir, archive, settings, isolated, slot)
        except BaseException:
            if slot is not None:
                slot.stop()
            raise
        job = _Job(job_id, proc, log_path, sockets=None if slot is None else slot.sockets)
        with self._lock:
            self._jobs[job_id] = job
        if self._logs is not None:
            self._logs.watch(job_id, log_path)
        threading.Thread(target=self._watch, args=(job,), name=f"job-{job_id[:8]}", daemon=True).start()
        if settings.warm_launcher:
            self._warm.fill(settings, isolated)  # the next job's
        log.info(
            "job=%s started pid=%d isolated=%s warm=%s socket=%s", job_id, proc.pid, isolated, slot is not None, socket
        )

    def _launch(
        self,
        job_id: str,
        job_dir: Path,
        archive: bytes,
        settings: SiteSettings,
        isolated: bool,
        slot: launcher.Slot | None,
    ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Unpack the job into job_dir and start its script: in the ready slot if given, else a new process."""
        from fedsec.jobs import load_job_folder, unpack  # job-time code, as in start
        from fedsec.jobs.env import ENV_DATASETS, ENV_JOB_ID, ENV_JOB_TOKEN, ENV_SITE, ENV_SOCKET
        from fedsec.jobs.launch import JobSpec

        try:
            if job_dir.exists():
                shutil.rmtree(job_dir)  # a previous run of this job on this site (e.g. before a restart)
            if slot is None:
                job_dir.mkdir(parents=True, mode=0o700)
                (job_dir / "work").mkdir()
            else:
                slot.folder.rename(job_dir)  # its sandbox's binds follow the folder
                slot.folder = job_dir
            unpack(archive, job_dir / "job")
        except OSError as exc:
            full = f"{self._site} disk full: " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise JobError(f"{full}cannot write the job's folder: {exc.strerror or exc}") from exc
        meta, app = load_job_folder(job_dir / "job")
        if app.he.enabled and not self._he_key.present():
            raise JobError("the signed job uses homomorphic encryption, but this site's kit has no HE context")
        code = job_dir / "job"
        custom = code / "app" / "custom"
        script = custom / app.script.path
        work = job_dir / "work"
        log_path = job_dir / "log.txt"
        timeout = app.workflow.round_timeout
        socket = None if slot is None else slot.sockets / "job.sock"
        initial = code / "app" / app.initial_model  # a task naming its digest is not downloaded again
        endpoint = self._endpoints.open(
            job_id, app.he, work, timeout, initial, socket=socket, strategy=app.strategy, sites=len(meta.sites)
        )
        try:
            base = {
                ENV_SOCKET: str(endpoint.socket),
                ENV_JOB_TOKEN: endpoint.token,
                ENV_JOB_ID: job_id,
                ENV_SITE: self._site,
                ENV_DATASETS: json.dumps(settings.datasets),
            }
            if slot is not None:
                inside = slot.inside / script.relative_to(job_dir)  # the script as its sandbox sees it
                launcher.hand_over(slot, JobSpec(inside, tuple(app.script.args), base).encode())
                log.info("job=%s script=%s runs in the ready job process", job_id, app.script.path)
                return slot.proc, log_path, endpoint.socket
            env = sandbox.script_env(base, work, [custom, sandbox.fedsec_package_dir().parent])
            command = [sys.executable, "-P", "-m", RUN_SCRIPT, str(script), *app.script.args]
            if isolated:
                datasets = tuple(Path(p) for p in settings.datasets.values())
                mounts = sandbox.JobMounts(code, work, endpoint.socket, self._kit_root, datasets)
                command = sandbox.guarded(sandbox.bwrap_argv(command, mounts))
            log.info("job=%s script=%s", job_id, app.script.path)
            death = sandbox.GUARD_SIGNAL if isolated else signal.SIGKILL
            proc = _proc.start(command, cwd=work, env=env, log_path=log_path, death_signal=death)
            return proc, log_path, endpoint.socket
        except BaseException:
            self._endpoints.close(job_id)
            raise

    def _watch(self, job: _Job) -> None:
        code = job.proc.wait()
        _proc.stop(job.proc, grace=0.5)  # reap anything the script left in its group
        self._endpoints.close(job.job_id)
        if job.sockets is not None:
            shutil.rmtree(job.sockets, ignore_errors=True)
        if self._logs is not None:  # the end of its log, before a report can make the script start again
            self._logs.ended(job.job_id)
        with self._lock:
            self._jobs.pop(job.job_id, None)
            self._ended.add(job.job_id)
            stopping = job.stopping
            if not stopping:  # it ran to its end: not started again while still assigned (site.replay)
                self._failed.add(job.job_id)
        if stopping:
            log.info("job=%s stopped", job.job_id)
            return
        failed = code != 0
        error = _proc.tail(job.log_path, limits.MAX_ERROR_TEXT) if failed else ""
        log.info("job=%s script exited code=%d", job.job_id, code)
        from fedsec.site import replay  # loaded by start() already

        replay.record_end(self._kit_root, job.job_id)
        try:
            self._report(job.job_id, failed, error, _proc.tail(job.log_path, limits.MAX_LOG_TEXT))
        except FedsecError as exc:
            log.warning("job=%s could not report its end: %s", job.job_id, exc)

    def remove_old_jobs(self, now: float | None = None) -> list[str]:
        """Delete the job folders not touched for the site's job_retention_days, never a running job's; their ids.

        A folder's age is that of its newest entry (the script's log, its work/ folder, the job). Raises
        ConfigError when the site settings are unusable.
        """
        keep = load_site_settings(self._kit_root).job_retention_days * 86400
        now = time.time() if now is None else now
        running = self.running()
        removed = []
        for job_dir in sorted(self._jobs_dir.iterdir()) if self._jobs_dir.is_dir() else []:
            if job_dir.name in running or job_dir.name.startswith(launcher.SLOT_PREFIX):
                continue  # a running job's folder, or the ready job process's
            if not job_dir.is_dir() or job_dir.is_symlink():
                continue
            try:
                touched = max(p.lstat().st_mtime for p in (job_dir, *job_dir.iterdir()))
            except OSError:
                continue  # removed meanwhile
            if now - touched > keep:
                shutil.rmtree(job_dir, ignore_errors=True)
                removed.append(job_dir.name)
        if removed:
            log.info("removed %d job folders older than %d days: %s", len(removed), keep // 86400, ",".join(removed))
        return removed

    def retention_loop(self, stop: threading.Event) -> None:
        """remove_old_jobs() now and then daily, until stop is set."""
        while True:
            try:
                self.remove_old_jobs()
            except (FedsecError, OSError) as exc:
                log.warning("old job folders not removed: %s", exc)
            if stop.wait(RETENTION_CHECK_SECONDS):
                return

    def stop(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.stopping = True
        _proc.stop(job.proc)

    def stop_all(self) -> None:
        """Stop every job and the warm job process (the site stops)."""
        self._warm.close()
        for job_id in self.running():
            self.stop(job_id)

    def warm_loop(self, stop: threading.Event) -> None:
        """Keep a ready job process while the site settings ask for one (warm_launcher), until stop is set.

        Starts the first one limits.WARM_LAUNCHER_DELAY_SECONDS after the site started (its imports
        would compete with the site's registration), then checks every WARM_CHECK_SECONDS; a job
        taking it starts the next one at once (start()).
        """
        if stop.wait(limits.WARM_LAUNCHER_DELAY_SECONDS):
            return
        while True:
            try:
                settings = load_site_settings(self._kit_root)
                if settings.warm_launcher:
                    self._warm.refresh(settings, functools.partial(sandbox.use_sandbox, settings.isolation, "(warm)"))
                else:
                    self._warm.drop()
            except (FedsecError, OSError) as exc:
                log.warning("warm launcher: %s", exc)
            if stop.wait(WARM_CHECK_SECONDS):
                return

    def sync(self, assigned: set[str], fetch: Callable[[str], tuple[bytes, JobSignature]]) -> None:
        """Start assigned jobs not running, stop running jobs no longer assigned."""
        for job_id in self.running() - assigned:
            log.info("job=%s no longer assigned: stopping it", job_id)
            self.stop(job_id)
        self._failed &= assigned
        with self._lock:
            self._ended &= assigned
            ended = set(self._ended)
        for job_id in assigned - self.running() - self._failed - ended:
            try:
                self.start(job_id, *fetch(job_id))
            except GaveUpError as exc:  # no longer assigned, or the site stops: nothing to report
                log.info("job=%s not started: %s", job_id, exc)
            except AuthError as exc:
                self._failed.add(job_id)
                log.error("job=%s refused: %s", job_id, exc)
                self._report(job_id, True, f"{self._site} refused the job: {exc}", "")
            except FedsecError as exc:
                self._failed.add(job_id)
                log.error("job=%s cannot start: %s", job_id, exc)
                self._report(job_id, True, f"cannot start on {self._site}: {exc}", "")


def _safe_id(job_id: str) -> str:
    try:
        return _fs.check_name("job id", job_id)
    except FedsecError as exc:
        raise JobError(str(exc)) from exc
