"""Running jobs on the server: one workflow process per job, and the relays to it.

Submitting stores the archive and a record; the scheduler starts a workflow
process per job (`python -m fedsec.workflow`), which dies with the server
and is started again, resuming, when the server comes back. A workflow
process has its job's workflow.ready_timeout, from its start, to open its
socket; a reaper turns each workflow's exit into the job's final status, with
the process's own message or its last lines of output (server paths cut out).
A site's failure is that site's (fedsec.server.job_sites): it restarts or
leaves the job, and the workflow ends the job only below min_clients.

A workflow process's state reaches the state store only through this module,
over the process's socket (fedsec.workflow.link): once it serves, the parent
hands it the job's state as stored (StartState), then pulls its reports
(PullState: rounds, refused updates, its outcome), records each through the
store (fenced by this replica's lease) and acknowledges it; participation changes
and the sites' end reports go to it with UpdateSites. No file in the job folder
is read or written by convention; the workspace holds only the job's models.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from fedsec import _fs, _proc, limits
from fedsec.errors import AuthError, FedsecError, JobError, LeaseLostError, StoreUnavailableError, WireError
from fedsec.jobs import load_job_folder, unpack
from fedsec.jobs import result as job_result
from fedsec.jobs.archive import pack_file
from fedsec.jobs.meta import meta_to_json
from fedsec.jobs.signing import JobSignature, check_job_id, verify_digest
from fedsec.pki.certs import Identity
from fedsec.server.job_sites import JobSites
from fedsec.server.site_logs import JobLogs, clean_text
from fedsec.server.store import JOB_ARCHIVE, JOBS_DIR, WORKSPACE_DIR, JobRecord, JobStatus, JobStore, archive_key
from fedsec.state.progress import progress_document, result_entry
from fedsec.state.records import ResultMeta, ResultOutcome, RoundKind, SiteOutcome, SiteReport
from fedsec.tracking.backends import ONLY_LOCAL, PENDING_FILE, Backends
from fedsec.tracking.events import check_batch
from fedsec.transport.local import socket_path, unix_channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, job_state, streams

log = logging.getLogger(__name__)

_READY_POLL_SECONDS = 0.1  # how often a starting workflow is checked: its socket, an early death
_OUTPUT_LINES = 12  # lines of a dead workflow's output shown in the job's reason
_INCOMPLETE_SECONDS = 60.0  # a record whose files are still missing after this was cut off mid-submission
_SIGNATURE = "job.sig"  # the submitting admin's signature of this run of job.zip, with its job id and time
_SITES = "sites"  # per-site reports: <site>.json
_LATE_DIR = "late_events"  # batches sent after the job ended, until written (fedsec.workflow.late reads them)
_LATE_WAIT_SECONDS = 5.0  # between looks at whether a job with late events or tracking left over has ended
_LATE_RETRY_SECONDS = 60.0  # after a late-events writer left some (its backend was down)
_TERMINATED = 143  # the exit status of a workflow process that ended on SIGTERM after ending its runs
_RUN_ENDS = {JobStatus.COMPLETED: "FINISHED", JobStatus.FAILED: "FAILED", JobStatus.ABORTED: "KILLED"}
_OLDER_STATE = "state.json"  # where a fedsec before the state link kept a job's rounds completed (read once)
_PULL_WAIT_SECONDS = 10.0  # how long one PullState call waits for a report of the workflow
_STORE_RETRY_SECONDS = 1.0  # before recording a report again that the store could not take


@dataclass
class _Workflow:
    job_id: str
    sites: frozenset[str]  # empty: every site
    proc: subprocess.Popen[bytes]
    channel: grpc.Channel
    stub: fedsec_pb2_grpc.WorkflowStub
    ready_timeout: float  # seconds from started until it must serve (workflow.ready_timeout)
    max_restarts: int  # workflow.max_site_restarts
    started: float  # time.monotonic() at its start
    left: set[str]  # sites that left the job: no longer assigned
    ready: bool = False
    push_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one site push at a time
    failure: str = ""  # why the server stopped it, when it did
    outcome: fedsec_pb2.WorkflowOutcome | None = None  # what the process reported as its end
    puller: threading.Thread | None = None  # records the process's reports (JobManager._pull_state)


class JobManager:
    """Job submission, scheduling, relaying and ending on the server."""

    def __init__(
        self,
        store: JobStore,
        run_dir: Path,
        alive_sites: Any,
        root_ca: x509.Certificate,
        he_context: Path | None,
        tracking: Backends = ONLY_LOCAL,
        tracking_dir: Path | None = None,
    ) -> None:
        """tracking_dir: the embedded MLflow store's folder (default <server kit>/tracking; a replicated server
        keeps it in the shared store folder, so a job's runs go on in one store whichever replica drives it)."""
        self._store = store
        self._he_context = he_context
        self._tracking_dir = tracking_dir or run_dir.parent / "tracking"
        self._tracking = tracking  # the operator's named backends; a job picks one by name
        kit = run_dir.parent  # no reason, log or error an admin sees names it
        self._kit_paths = sorted({str(kit.resolve()), str(kit.absolute())}, key=len, reverse=True)
        self._root_ca = root_ca
        self._run_dir = run_dir
        self._alive_sites = alive_sites  # () -> frozenset[str]
        self._lock = threading.Condition()
        self._workflows: dict[str, _Workflow] = {}
        self._ending: set[str] = set()
        self._running_seen: dict[str, set[str]] = {}  # job -> sites that had its script running since a failure
        self._refused_reports: set[tuple[str, str]] = set()  # logged once each
        self._late_writers: dict[str, subprocess.Popen[bytes]] = {}  # job -> its running late-events writer
        self._late_due: dict[str, float] = {}  # job -> when (time.monotonic()) to start its late-events writer
        for folder in (store.root / JOBS_DIR).glob(f"*/{_LATE_DIR}"):  # left by a server that stopped
            if any(folder.glob("*.pb")):
                self._late_due[folder.parent.name] = 0.0
        for pending in (store.root / JOBS_DIR).glob(f"*/{WORKSPACE_DIR}/{PENDING_FILE}"):
            self._late_due[pending.parent.parent.name] = 0.0
        self._version = 1
        # jobs that were running when the server stopped stay assigned to their sites until their workflow starts
        # again: a site that asks before the scheduler's first pass must not stop their scripts
        self._resuming: dict[str, tuple[str, frozenset[str]]] = {
            r.job_id: (r.name, frozenset(json.loads(r.meta_json).get("sites", [])))
            for r in store.unfinished()
            if r.status is JobStatus.RUNNING
        }
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True),
            threading.Thread(target=self._reap_loop, name="reaper", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ admin side

    def submit(
        self, chunks: Iterable[bytes], info: fedsec_pb2.PayloadInfo, signature: JobSignature, who: Identity
    ) -> JobRecord:
        """Receive a job archive announced by info from chunks, check it is signed by who, and store it.

        The archive goes to a file in the store (hashed while written, bounded by
        limits.MAX_JOB_ARCHIVE_BYTES), never whole into memory. The scheduler starts the job.
        Raises WireError for a bad upload, AuthError for a bad signature, JobError for a bad job.
        """
        with self._staging() as staging:
            archive = staging / JOB_ARCHIVE
            with streams.PayloadWriter(archive, info, limits.MAX_JOB_ARCHIVE_BYTES, "job archive") as writer:
                for chunk in chunks:
                    writer.write(chunk)
                writer.finish()
            self._check_signed(bytes(info.sha256), signature, who, "submitted job")
            return self._store_job(staging, signature, who, bytes(info.sha256))

    def clone(self, job_id: str, signature: JobSignature, who: Identity) -> JobRecord:
        """A new job from a stored job's archive, signed by who as a new job id (signature.job_id).

        Raises AuthError and JobError as submit() does.
        """
        with self._staging() as staging:
            archive = staging / JOB_ARCHIVE
            shutil.copyfile(self._store.job_dir(job_id) / JOB_ARCHIVE, archive)
            os.chmod(archive, 0o600)
            digest = streams.describe_file(archive).sha256
            self._check_signed(digest, signature, who, f"clone of job {job_id}")
            return self._store_job(staging, signature, who, digest)

    def archive_digest(self, job_id: str) -> tuple[bytes, JobSignature]:
        """sha256 of a stored job's archive, and the job's signature: what an admin signs to clone it."""
        path, signature = self.archive_file(job_id)
        digest = self._store.get(job_id).archive_sha256  # b"": stored by a fedsec that did not keep it
        return digest or streams.describe_file(path).sha256, signature

    def _staging(self) -> _Staging:
        return _Staging(self._store.root)

    def _check_signed(self, digest: bytes, signature: JobSignature, who: Identity, where: str) -> None:
        """Raise unless who signed the archive of this sha256 digest for a fresh job id (one signature, one run)."""
        try:
            check_job_id(signature.job_id, f"{where}: signed job id")
        except JobError as exc:
            raise WireError(str(exc)) from exc
        signer = verify_digest(digest, signature, self._root_ca, where, job_id=signature.job_id)
        if signer.name != who.name:
            raise AuthError(f"the job is signed by {signer.name}, not by the submitting admin {who.name}")
        age = time.time() - signature.submit_time
        if age < -limits.JOB_CLOCK_SKEW_SECONDS or age > limits.MAX_SUBMIT_DELAY_SECONDS:
            raise AuthError(
                f"{where}: signed submit time is {age:+.0f} s from the server's clock (allowed:"
                f" {-limits.JOB_CLOCK_SKEW_SECONDS}..{limits.MAX_SUBMIT_DELAY_SECONDS} s); check the admin's clock"
            )

    def delete(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._workflows:
                raise JobError(f"job {job_id}: still running; abort it first")
        self._store.delete(job_id)

    def _store_job(self, staging: Path, signature: JobSignature, who: Identity, digest: bytes) -> JobRecord:
        """File the checked archive staging/job.zip as a job; staging is the caller's to remove."""
        unpack(staging / JOB_ARCHIVE, staging / "job")
        try:
            meta, app = load_job_folder(staging / "job")
        except JobError as exc:
            raise JobError(self._public(str(exc).replace(f"job folder {staging / 'job'}", "the job"))) from exc
        self._tracking.get(app.tracking.backend)  # before any record, file or request
        if app.he.enabled and self._he_context is None:
            raise JobError(
                "the job uses homomorphic encryption, but the server kit has no HE context"
                " (provision the project with features.he.enabled)"
            )
        record = self._store.add(
            job_id=signature.job_id,
            name=meta.name,
            submitter=who.name,
            submitter_org=who.org,
            submitter_role=who.role.value if who.role else "",
            meta_json=meta_to_json(meta),
            num_rounds=app.workflow.num_rounds,
            archive_sha256=digest,
        )
        job_dir = self._store.job_dir(record.job_id)
        self._store.blobs.adopt(archive_key(record.job_id), staging / JOB_ARCHIVE)  # flushed: by PayloadWriter
        sig = {
            "signature": base64.b64encode(signature.signature).decode(),
            "signer_cert": signature.signer_cert.decode(),
            "job_id": signature.job_id,
            "submit_time": signature.submit_time,
        }
        _fs.write_atomic(job_dir / _SIGNATURE, json.dumps(sig).encode(), mode=0o600)
        (staging / "job").rename(job_dir / "job")
        log.info("job=%s name=%s submitted by=%s", record.job_id, record.name, who.name)
        self._wake()
        return record

    def abort(self, job_id: str, who: Identity) -> JobRecord:
        record = self._store.get(job_id)
        if record.status.finished:
            raise JobError(f"job {job_id}: already {record.status.value}")
        record = self._end(job_id, JobStatus.ABORTED, f"aborted by {who.name}")
        log.info("job=%s aborted by=%s", job_id, who.name)
        return record

    def progress(self, job_id: str) -> str:
        """The job's progress document (fedsec.state.progress) as JSON text ('' while it holds nothing)."""
        doc = self._progress_document(job_id)
        if doc == {"rounds": [], "final": None}:
            return ""
        return json.dumps(doc)

    def _progress_document(self, job_id: str) -> dict[str, Any]:
        state = self._store.state
        participation = JobSites.load(state, job_id, self._store.job_path(job_id)).record()
        return progress_document(state.rounds(job_id), state.refusals(job_id), participation, state.get_result(job_id))

    def archive_file(self, job_id: str) -> tuple[Path, JobSignature]:
        """The file holding a stored job's archive, and the job's signature."""
        self._store.get(job_id)
        job_dir = self._store.job_dir(job_id)
        return job_dir / JOB_ARCHIVE, _read_signature(job_dir)

    def site_records(self, job_id: str) -> dict[str, dict[str, str]]:
        """What each site reported about the job: {site: {"outcome", "error", "log"}}."""
        reports = self._store.state.site_reports(job_id)
        if reports:
            return {r.site: {"outcome": r.outcome.value, "error": r.error, "log": r.log_tail} for r in reports}
        folder = self._store.job_dir(job_id) / _SITES  # a job that ended under an older fedsec
        out: dict[str, dict[str, str]] = {}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            out[path.stem] = json.loads(path.read_text())
        return out

    def workflow_log(self, job_id: str) -> str:
        self._store.get(job_id)
        return self._public(_proc.tail(self._store.job_dir(job_id) / "workflow.log", limits.MAX_LOG_TEXT))

    def result_archive(self, job_id: str) -> Path:
        """The job's result folder (final global model, metrics, workflow log) zipped into a new file.

        The file is the caller's: it streams it and removes it. Raises JobError.
        """
        record = self._store.get(job_id)
        if not record.status.finished:
            raise JobError(f"job {job_id}: still {record.status.value}; download it when it has finished")
        job_dir = self._store.job_dir(job_id)
        result = job_dir / WORKSPACE_DIR / "result"
        result.mkdir(parents=True, exist_ok=True)
        for name in ("workflow.log",):
            if (job_dir / name).exists():
                text = self._public((job_dir / name).read_text(errors="replace"))
                _fs.write_atomic(result / name, text.encode())
        summary = {k: v for k, v in _record_dict(record).items() if k != "meta_json"}
        kept = result_entry(self._store.state.get_result(job_id))
        if kept is not None and job_result.kept_model(job_dir / WORKSPACE_DIR, kept["model"]) is None:
            kept = None
        summary["result"] = kept  # the model kept, and from which round
        _fs.write_atomic(result / "job.json", json.dumps(summary, indent=2).encode())
        progress = self.progress(job_id)
        if progress:
            _fs.write_atomic(result / "progress.json", progress.encode())
        fd, name = tempfile.mkstemp(dir=job_dir / WORKSPACE_DIR, prefix=".download-", suffix=".zip")
        os.close(fd)
        try:
            return pack_file(result, Path(name))
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------ site side

    def assignments(self, site: str) -> list[tuple[str, str]]:
        with self._lock:
            flows = [w for w in self._workflows.values() if (not w.sites or site in w.sites) and site not in w.left]
            resuming = [(j, n) for j, (n, sites) in self._resuming.items() if not sites or site in sites]
        jobs = [(w.job_id, self._store.get(w.job_id).name) for w in flows]
        return jobs + [(j, n) for j, n in resuming if self.may_run(j, site)]

    def may_run(self, job_id: str, site: str) -> bool:
        with self._lock:
            flow = self._workflows.get(job_id)
        if flow is not None:
            return (not flow.sites or site in flow.sites) and site not in flow.left
        record = self._store.get(job_id)
        sites = json.loads(record.meta_json).get("sites", [])
        if sites and site not in sites:
            return False
        return site not in JobSites.load(self._store.state, job_id, self._store.job_path(job_id)).left

    def fetched(self, job_id: str, site: str) -> None:
        """Record that site received the whole archive of job_id: from now on it may report on the job."""
        job_dir = self._store.job_dir(job_id)
        with self._lock:
            sites = JobSites.load(self._store.state, job_id, job_dir)
            if site not in sites.fetched:
                sites.fetched.add(site)
                sites.save()

    def note_running(self, site: str, job_ids: tuple[str, ...]) -> None:
        """A heartbeat of site listed job_ids as running there."""
        with self._lock:
            for job_id in job_ids:
                if job_id in self._workflows:
                    self._running_seen.setdefault(job_id, set()).add(site)

    def wait_change(self, known: int, timeout: float) -> int:
        """Wait until the assignment version differs from known (or timeout); return it."""
        with self._lock:
            self._lock.wait_for(lambda: self._version != known or self._stop.is_set(), timeout)
            return self._version

    def get_task(
        self, job_id: str, site: str, wait: float, held: frozenset[bytes] = frozenset()
    ) -> Iterator[fedsec_pb2.TaskPart]:
        """Relay site's task request to the job's workflow; held: digests of models the site says it holds."""
        flow = self._ready_flow(job_id)
        if flow is None:
            yield _status_part(self._status_for_site(job_id, wait))
            return
        request = fedsec_pb2.TaskRequest(job_id=job_id, site=site, wait_seconds=wait, held_sha256=sorted(held))
        try:
            yield from flow.stub.GetTask(request, timeout=wait + 120)
        except grpc.RpcError as exc:
            log.info(
                "job=%s task relay for site=%s ended: %s",
                job_id,
                site,
                exc.code() if isinstance(exc, grpc.Call) else exc,
            )
            yield _status_part(self._status_for_site(job_id, 1.0))

    def submit_result(
        self, job_id: str, site: str, header: fedsec_pb2.ResultHeader, rest: Iterator[fedsec_pb2.ResultPart]
    ) -> fedsec_pb2.ResultReply:
        flow = self._ready_flow(job_id)
        if flow is None:
            return fedsec_pb2.ResultReply(accepted=False, reason="the job's workflow is not running")
        header.site = site  # from the verified certificate, never from the site

        def parts() -> Iterator[fedsec_pb2.ResultPart]:
            yield fedsec_pb2.ResultPart(header=header)
            yield from rest

        try:
            reply: fedsec_pb2.ResultReply = flow.stub.SubmitResult(parts(), timeout=600)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            detail = exc.details() if isinstance(exc, grpc.Call) else ""
            return fedsec_pb2.ResultReply(accepted=False, reason=f"workflow refused the result: {code} {detail}")
        return reply

    def send_events(self, batch: fedsec_pb2.EventBatch) -> fedsec_pb2.EventAck:
        """Relay a site's tracking events to the job's workflow, which stores them; for an ended job, keep them.

        Raises JobError when the job ended more than limits.TRACKING_LATE_EVENTS_SECONDS ago (the site may drop
        them), WireError for bad events, FedsecError when the site should send them again later.
        """
        flow = self._ready_flow(batch.job_id)
        if flow is None:
            record = self._store.get(batch.job_id)
            if record.status.finished:
                return self._late_events(record, batch)
            raise FedsecError(f"job {batch.job_id}: the workflow is starting; send the events again")
        try:
            ack: fedsec_pb2.EventAck = flow.stub.SendEvents(batch, timeout=60)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise WireError(exc.details() or "bad events") from exc
            raise FedsecError(f"job {batch.job_id}: the workflow did not store the events") from exc
        return ack

    def _late_events(self, record: JobRecord, batch: fedsec_pb2.EventBatch) -> fedsec_pb2.EventAck:
        """Store a checked batch of an ended job for its late-events writer (fedsec.workflow.late); acknowledge it."""
        window = limits.TRACKING_LATE_EVENTS_SECONDS
        age = time.time() - (record.end_time or time.time())
        if age > window:
            raise JobError(
                f"job {record.job_id} ended {age / 86400:.1f} days ago; the server stores a job's events for"
                f" {window / 86400:g} days after its end (limits.TRACKING_LATE_EVENTS_SECONDS), so not these"
            )
        check_batch(batch, f"late events of {batch.site}")
        data = batch.SerializeToString()
        folder = self._store.job_dir(record.job_id) / _LATE_DIR
        with self._lock:
            try:
                folder.mkdir(exist_ok=True, mode=0o700)
                held = sum(p.stat().st_size for p in folder.glob("*.pb"))
                if held + len(data) > limits.MAX_LATE_EVENTS_BYTES:
                    raise FedsecError(
                        f"job {record.job_id}: the server holds {held} bytes of late events not yet written;"
                        " send these again later"
                    )
                _fs.write_atomic(folder / f"{time.time_ns():020d}-{batch.site}.pb", data, mode=0o600)
            except OSError as exc:
                full = "server disk full: " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                raise FedsecError(
                    f"job {record.job_id}: {full}cannot store late events; send them again later"
                ) from exc
            self._late_due.setdefault(record.job_id, 0.0)
        log.info("job=%s site=%s sent %d events after the job ended", record.job_id, batch.site, len(batch.events))
        return fedsec_pb2.EventAck(stored=len(batch.events))

    def _run_late_writers(self) -> None:
        """Start the late-events writers that are due; note when one that left events is to run again."""
        now = time.monotonic()
        with self._lock:
            for job_id, proc in list(self._late_writers.items()):
                if proc.poll() is None:
                    continue
                del self._late_writers[job_id]
                if proc.returncode != 0:
                    log.warning("job=%s late events not all written; trying again later", job_id)
                    self._late_due[job_id] = now + _LATE_RETRY_SECONDS
            due = [j for j, at in self._late_due.items() if at <= now and j not in self._late_writers]
            for job_id in due:
                del self._late_due[job_id]
        for job_id in due:
            try:
                record = self._store.get(job_id)
                job_dir = self._store.job_dir(job_id)
            except JobError as exc:  # deleted meanwhile
                log.info("job=%s late events not written: %s", job_id, exc)
                continue
            if not record.status.finished:  # never beside the job's workflow, which takes up what waits itself
                with self._lock:
                    self._late_due.setdefault(job_id, time.monotonic() + _LATE_WAIT_SECONDS)
                continue
            argv = [sys.executable, "-m", "fedsec.workflow.late", "--job-dir", str(job_dir), "--job-id", job_id]
            argv += ["--tracking-dir", str(self._tracking_dir), "--end", _RUN_ENDS.get(record.status, "KILLED")]
            env = _child_env() | self._tracking_env(job_dir)
            proc = _proc.start(argv, cwd=job_dir, env=env, log_path=job_dir / "workflow.log")
            with self._lock:
                self._late_writers[job_id] = proc

    def site_logs(self, job_id: str) -> JobLogs:
        """The sites' logs of a stored job (fedsec.server.site_logs). Raises JobError when there is no such job."""
        self._store.get(job_id)
        return JobLogs(self._store.job_dir(job_id))

    def append_site_log(self, job_id: str, site: str, chunk: fedsec_pb2.JobLogChunk) -> fedsec_pb2.JobLogAck:
        """Append a piece of site's log of job_id; what the server holds. JobError when site never fetched the job."""
        job_dir = self._store.job_dir(job_id)
        if site not in JobSites.load(self._store.state, job_id, job_dir).fetched:
            raise JobError(f"job {job_id}: {site} never fetched this job, so it has no log of it")
        done = JobLogs(job_dir).append(site, chunk.run, chunk.offset, chunk.data, chunk.last)
        return fedsec_pb2.JobLogAck(offset=done.offset, full=done.full)

    def report(self, job_id: str, site: str, failed: bool, error: str, log_tail: str = "") -> None:
        """Take site's report of its script's end; a failure makes the site restart or leave the job.

        Raises JobError when site never fetched the job (it cannot have run it).
        """
        job_dir = self._store.job_dir(job_id)
        with self._lock:
            if site not in JobSites.load(self._store.state, job_id, job_dir).fetched:
                if (job_id, site) not in self._refused_reports:
                    self._refused_reports.add((job_id, site))
                    log.warning("job=%s site=%s reported on a job it never fetched: refused", job_id, site)
                raise JobError(f"job {job_id}: {site} never fetched this job, so it cannot report on it")
        outcome = SiteOutcome.FAILED if failed else SiteOutcome.FINISHED
        # the site's words (job code's, in fact): never a terminal control, wherever they are shown later
        error, log_tail = clean_text(error.encode()), clean_text(log_tail.encode())
        self._store.state.put_site_report(job_id, SiteReport(site, outcome, error, log_tail))
        record = self._store.get(job_id)
        if not failed or record.status.finished:
            log.info("job=%s site=%s reports its script %s", job_id, site, "failed" if failed else "finished")
            flow = self._ready_flow(job_id)
            if flow is not None:  # the workflow awaits the reports of the sites that took part before it ends
                self._push_sites(flow)
            return
        with self._lock:
            flow = self._workflows.get(job_id)
            sites = JobSites.load(self._store.state, job_id, job_dir)
            if site in sites.left:
                return
            seen = self._running_seen.get(job_id, set())
            was_running = site in seen
            seen.discard(site)  # a restart counts as one only once the site has the script running again
            leaves = sites.fail(site, error, was_running=was_running, max_restarts=flow.max_restarts if flow else 0)
            sites.save()
            if leaves and flow is not None:
                flow.left.add(site)
        log.warning(
            "job=%s site=%s training script failed: the site %s", job_id, site, "leaves" if leaves else "restarts"
        )
        if flow is not None and flow.ready:
            self._push_sites(flow)  # the workflow reads the participation record now
        self._bump()  # heartbeats tell the site whether it still runs the job

    def sites_changed(self, alive: frozenset[str]) -> None:
        """The registry's alive sites changed: every ready workflow hears the sites alive now."""
        with self._lock:
            flows = [w for w in self._workflows.values() if w.ready]
        for flow in flows:
            self._push_sites(flow)

    # ------------------------------------------------------------ internals

    def _status_for_site(self, job_id: str, wait: float) -> fedsec_pb2.TaskStatus:
        record = self._store.get(job_id)
        if record.status.finished:
            return fedsec_pb2.TASK_STATUS_DONE
        time.sleep(min(wait, 1.0))  # the workflow is starting: let the site ask again shortly
        return fedsec_pb2.TASK_STATUS_WAIT

    def _ready_flow(self, job_id: str) -> _Workflow | None:
        with self._lock:
            flow = self._workflows.get(job_id)
            return flow if flow is not None and flow.ready else None

    def _push_sites(self, flow: _Workflow) -> None:
        """Tell flow's process the sites alive, the participation record and the sites that reported their end.

        All of it is read under the flow's push lock, so of two pushes racing (a site registering as the
        workflow becomes ready) the later one carries the newer state.
        """
        with flow.push_lock:
            alive: frozenset[str] = self._alive_sites()
            try:
                sites = JobSites.load(self._store.state, flow.job_id, self._store.job_path(flow.job_id))
                reported = sorted(r.site for r in self._store.state.site_reports(flow.job_id))
            except JobError as exc:
                log.warning("job=%s cannot read its participation for its workflow: %s", flow.job_id, exc)
                return
            message = fedsec_pb2.SiteList(
                sites=sorted(alive), participation=job_state.participation_to_wire(sites.record()), reported=reported
            )
            try:
                flow.stub.UpdateSites(message, timeout=5)
            except grpc.RpcError:
                log.info("job=%s could not update its workflow's sites (it may be ending)", flow.job_id)

    def _job_start(self, job_id: str) -> fedsec_pb2.JobStart:
        """The job's state as stored, for its starting workflow process (fedsec.workflow.link). Raises JobError."""
        state = self._store.state
        sites = JobSites.load(state, job_id, self._store.job_path(job_id))
        rounds = state.rounds(job_id)
        start = fedsec_pb2.JobStart(
            completed_rounds=self._store.get(job_id).current_round,
            counted=sorted({site for r in rounds for site in r.accepted}),
            refusals=[job_state.refusal_to_wire(r) for r in state.refusals(job_id)],
            participation=job_state.participation_to_wire(sites.record()),
        )
        final = next((r for r in rounds if r.kind is RoundKind.EVALUATE), None)
        if final is not None:
            start.final.CopyFrom(job_state.round_to_wire(final))
        return start

    def _pull_state(self, flow: _Workflow) -> None:
        """Record flow's reports through the store as they come, acknowledging each (its thread's loop).

        A report the store could not take (unavailable) is not acknowledged and is recorded again; one it
        refuses is logged and passed over; a lost lease ends the loop (this replica stops its workflows).
        """
        acked = 0
        while not self._stop.is_set():
            with self._lock:
                current = self._workflows.get(flow.job_id) is flow
            if not current or flow.proc.poll() is not None:
                return
            request = fedsec_pb2.StatePull(acked=acked, wait_seconds=_PULL_WAIT_SECONDS)
            try:
                reply = flow.stub.PullState(request, timeout=_PULL_WAIT_SECONDS + 30)
            except grpc.RpcError:
                self._stop.wait(_READY_POLL_SECONDS)  # ending, or busy: the loop's checks decide
                continue
            for report in reply.reports:
                if report.seq <= acked:
                    continue
                try:
                    self._record_report(flow, report)
                except LeaseLostError as exc:
                    log.warning("job=%s stops recording its workflow's state: %s", flow.job_id, exc)
                    return
                except StoreUnavailableError as exc:
                    log.warning("job=%s cannot record its workflow's state now: %s", flow.job_id, exc)
                    self._stop.wait(_STORE_RETRY_SECONDS)
                    break
                except (JobError, WireError) as exc:
                    log.warning("job=%s a report of its workflow is not recorded: %s", flow.job_id, exc)
                acked = report.seq

    def _record_report(self, flow: _Workflow, report: fedsec_pb2.StateReport) -> None:
        """Record one report of flow's process through the store. Raises JobError, WireError."""
        where = f"job {flow.job_id}: workflow report {report.seq}"
        kind = report.WhichOneof("what")
        if kind == "round":
            record = job_state.round_from_wire(report.round, where)
            self._store.put_round(flow.job_id, record)
            if record.kind is RoundKind.TRAIN:
                self._store.set_progress(flow.job_id, report.completed_rounds)
        elif kind == "refusal":
            self._store.put_refusal(flow.job_id, job_state.refusal_from_wire(report.refusal, where))
        elif kind == "outcome":
            flow.outcome = report.outcome  # recorded as the job ends, when the process has exited
        else:
            raise WireError(f"{where}: carries nothing")

    def wake_sites(self) -> None:
        """Answer every held heartbeat now (an admin changed something sites must hear)."""
        self._bump()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _bump(self) -> None:
        with self._lock:
            self._version += 1
            self._lock.notify_all()

    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for record in self._store.unfinished():
                    if not self._submitted_whole(record):
                        continue
                    with self._lock:
                        busy = (
                            record.job_id in self._workflows
                            or record.job_id in self._ending
                            or len(self._workflows) >= limits.MAX_RUNNING_JOBS
                        )
                    if not busy:
                        self._start(record)
            except FedsecError:
                log.exception("scheduler error")
            with self._lock:
                self._lock.wait(1.0)

    def _submitted_whole(self, record: JobRecord) -> bool:
        """Whether a job's files are in place (its folder is renamed in last, after the record is made)."""
        if (self._store.job_path(record.job_id) / "job").is_dir():
            return True
        if time.time() - record.submit_time > _INCOMPLETE_SECONDS:
            self._store.finish(record.job_id, JobStatus.FAILED, "the submission never completed (server stopped?)")
        return False

    def _start(self, record: JobRecord) -> None:
        job_dir = self._store.job_dir(record.job_id)
        resumed = record.status is JobStatus.RUNNING
        try:
            _meta, app = load_job_folder(job_dir / "job")
            left = set(JobSites.load(self._store.state, record.job_id, job_dir).left)
        except StoreUnavailableError:
            raise  # nothing is wrong with the job: the scheduler tries again
        except JobError as exc:
            self._store.finish(record.job_id, JobStatus.FAILED, public_text(f"the stored job is unusable: {exc}"))
            self._not_resuming(record.job_id)
            return
        try:
            record = self._store.set_running(record.job_id)
        except JobError:  # it finished since the scheduler listed it
            self._not_resuming(record.job_id)
            return
        if resumed:
            self._adopt_older_count(record.job_id, job_dir)
        sock = socket_path(self._run_dir, f"wf-{record.job_id[:8]}.sock")
        argv = [sys.executable, "-m", "fedsec.workflow", "--job-dir", str(job_dir), "--job-id", record.job_id]
        sock.unlink(missing_ok=True)  # a dead predecessor's: the new process's socket shows it is serving
        argv += ["--socket", str(sock)]
        if self._he_context is not None:
            argv += ["--he-context", str(self._he_context)]
        argv += ["--tracking-dir", str(self._tracking_dir), f"--submitter={record.submitter}"]
        argv += ["--server-kit", str(self._run_dir.parent)]
        env = _child_env() | self._tracking_env(job_dir)
        proc = _proc.start(argv, cwd=job_dir, env=env, log_path=job_dir / "workflow.log")
        channel = unix_channel(sock)
        sites = frozenset(json.loads(record.meta_json).get("sites", []))
        stub = fedsec_pb2_grpc.WorkflowStub(channel)
        cfg = app.workflow
        flow = _Workflow(
            record.job_id, sites, proc, channel, stub, cfg.ready_timeout, cfg.max_site_restarts, time.monotonic(), left
        )
        with self._lock:
            self._workflows[record.job_id] = flow
            self._resuming.pop(record.job_id, None)
        log.info("job=%s workflow %s pid=%d", record.job_id, "resumed" if resumed else "started", proc.pid)
        waiter = threading.Thread(target=self._await_ready, args=(flow, sock), name=f"ready-{record.job_id[:8]}")
        waiter.daemon = True
        waiter.start()

    def _adopt_older_count(self, job_id: str, job_dir: Path) -> None:
        """A job left running by an older fedsec, which kept its rounds completed in workspace/state.json:
        take that count into the store once, so the job resumes where it was (the file is only read)."""
        path = job_dir / WORKSPACE_DIR / _OLDER_STATE
        try:
            if self._store.get(job_id).current_round or not path.is_file():
                return
            doc = json.loads(_fs.read_bounded(path, 64 << 10, f"workspace/{_OLDER_STATE}", JobError))
            count = doc.get("completed_rounds") if isinstance(doc, dict) else None
            if not isinstance(count, int) or isinstance(count, bool):
                raise JobError(f"workspace/{_OLDER_STATE}: completed_rounds is not a count")
            self._store.set_progress(job_id, count)
        except (JobError, ValueError) as exc:  # the job then runs again from its first round
            log.warning("job=%s its rounds completed under an older fedsec are not taken: %s", job_id, exc)
            return
        log.info("job=%s takes %d rounds completed under an older fedsec", job_id, count)

    def _not_resuming(self, job_id: str) -> None:
        with self._lock:
            self._resuming.pop(job_id, None)
        self._bump()

    def _await_ready(self, flow: _Workflow, sock: Path) -> None:
        """Wait until flow's process serves on sock; stop it at its start deadline (the reaper ends the job)."""
        ready: grpc.Future | None = None  # connecting only once the socket exists: no reconnect backoff to sit out
        deadline = flow.started + flow.ready_timeout
        try:
            while True:
                if ready is None and _listening(sock):
                    ready = grpc.channel_ready_future(flow.channel)
                wait = max(0.0, min(_READY_POLL_SECONDS, deadline - time.monotonic()))
                try:
                    if ready is not None:
                        ready.result(timeout=wait)
                        break
                    time.sleep(wait)
                except (grpc.FutureTimeoutError, grpc.FutureCancelledError):
                    pass
                with self._lock:
                    current = self._workflows.get(flow.job_id) is flow
                if not current or flow.proc.poll() is not None:
                    return  # ended or aborted meanwhile: the reaper (or the abort) says why
                if time.monotonic() >= deadline:
                    flow.failure = (
                        f"the workflow process was not ready within {flow.ready_timeout:g} s "
                        "(workflow.ready_timeout) and was stopped"
                    )
                    log.error("job=%s %s", flow.job_id, flow.failure)
                    _proc.stop(flow.proc)
                    return
        finally:
            if ready is not None:
                ready.cancel()
        try:
            flow.stub.StartState(self._job_start(flow.job_id), timeout=30)
        except (grpc.RpcError, JobError) as exc:
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            flow.failure = f"the workflow process did not take the job's state: {detail}"
            log.error("job=%s %s", flow.job_id, flow.failure)
            _proc.stop(flow.proc)
            return
        flow.puller = threading.Thread(target=self._pull_state, args=(flow,), name=f"state-{flow.job_id[:8]}")
        flow.puller.daemon = True
        flow.puller.start()
        self._mark_ready(flow)

    def _mark_ready(self, flow: _Workflow) -> None:
        """flow's process serves: from now on it hears every change of the alive sites, and the sites now."""
        with self._lock:  # ready first: a site that registers from here on is pushed by sites_changed
            flow.ready = True
        self._push_sites(flow)  # then the sites alive now, which include any that registered before
        self._bump()

    def _tracking_env(self, job_dir: Path) -> dict[str, str]:
        """The tracking backend the job names, handed to its workflow ({}: none, the workflow warns)."""
        try:
            _, app = load_job_folder(job_dir / "job")
            return self._tracking.get(app.tracking.backend).env()
        except JobError as exc:
            log.warning("job=%s tracking is off: %s", job_dir.name, self._public(str(exc)))
            return {}

    def _public(self, text: str) -> str:
        """text with the server kit's absolute path cut out: what an admin may see."""
        for path in self._kit_paths:
            text = text.replace(path, "<server kit>")
        return text

    def _reap_loop(self) -> None:
        while not self._stop.wait(0.3):
            with self._lock:
                ended = [w for w in self._workflows.values() if w.proc.poll() is not None]
            for flow in ended:
                self._reaped(flow)
            try:
                self._run_late_writers()
            except (FedsecError, OSError) as exc:
                log.warning("late events: %s", self._public(str(exc)))

    def _reaped(self, flow: _Workflow) -> None:
        job_dir = self._store.job_dir(flow.job_id)
        if flow.outcome is not None:
            status = JobStatus.COMPLETED if flow.outcome.completed else JobStatus.FAILED
            reason = flow.outcome.reason
        else:
            status = JobStatus.FAILED
            reason = flow.failure or exit_text(flow.proc.returncode)
            if _disk_full(job_dir):
                reason = f"server disk full: {reason}"
            output = last_lines(_proc.tail(job_dir / "workflow.log", 8 << 10), _OUTPUT_LINES)
            reason += f"; its last output:\n{output}" if output else "; it wrote no output"
        self._end(flow.job_id, status, public_text(reason))

    def _end(self, job_id: str, status: JobStatus, reason: str) -> JobRecord:
        with self._lock:
            flow = self._workflows.pop(job_id, None)
            self._resuming.pop(job_id, None)
            self._running_seen.pop(job_id, None)
            self._ending.add(job_id)  # keeps the scheduler from starting it again meanwhile
        try:
            if flow is not None:
                if _proc.stop(flow.proc) not in (0, _TERMINATED):
                    # it died or was killed before it ended its tracking runs: its late-events writer ends them
                    with self._lock:
                        self._late_due.setdefault(job_id, 0.0)
                if flow.puller is not None:  # what the job ends with is what was recorded: no report after this
                    flow.puller.join(_PULL_WAIT_SECONDS + 30)
                flow.channel.close()
            kept = self._kept_result(job_id, flow)
            record = self._store.finish(job_id, status, self._public(reason))  # first final status wins
            self._record_outcome(job_id, record.status, record.reason, kept)
            if (self._store.job_dir(job_id) / WORKSPACE_DIR / PENDING_FILE).exists():
                with self._lock:  # its tracking did not write everything: the late-events writer does
                    self._late_due.setdefault(job_id, 0.0)
        finally:
            with self._lock:
                self._ending.discard(job_id)
        self._bump()
        if flow is not None:
            log.info("job=%s ended status=%s", job_id, record.status.value)
        return record

    def _kept_result(self, job_id: str, flow: _Workflow | None) -> dict[str, Any] | None:
        """The model the job keeps as its result: the one its workflow reported, or, when the workflow was
        stopped or killed before it reported one, the checkpoint of the last round the store counts."""
        workspace = self._store.job_dir(job_id) / WORKSPACE_DIR
        if flow is not None and flow.outcome is not None and flow.outcome.HasField("kept"):
            kept = flow.outcome.kept
            if job_result.kept_model(workspace, kept.model) is not None:
                return {"model": kept.model, "round": kept.round}
            log.warning("job=%s its workflow reported a result model that is not there", job_id)
        try:
            entry = job_result.keep_last_checkpoint(workspace, self._store.get(job_id).current_round)
        except (OSError, JobError) as exc:
            log.warning("job=%s keeps no result: %s", job_id, self._public(str(exc)))
            return None
        if entry is not None:
            log.info("job=%s keeps the global model of round %d as its result", job_id, entry["round"])
        return entry

    def _record_outcome(self, job_id: str, status: JobStatus, reason: str, kept: dict[str, Any] | None) -> None:
        """Record what the job kept as its result (the model's blob key, round and digest) in the state."""
        try:
            meta = ResultMeta(ResultOutcome(status.value.removeprefix("finished:")), reason)
            if kept is not None:
                key = f"{JOBS_DIR}/{job_id}/{WORKSPACE_DIR}/{job_result.RESULT}/{kept['model']}"
                info = self._store.blobs.info(key)
                if info is not None:
                    meta = ResultMeta(meta.outcome, reason, key, int(kept["round"]), info.sha256, info.size)
            self._store.put_result(job_id, meta)
        except (OSError, JobError) as exc:
            log.warning("job=%s its result is not in the state: %s", job_id, self._public(str(exc)))

    def current_round(self, job_id: str) -> int:
        """Rounds the job completed, as the state records them."""
        return self._store.get(job_id).current_round

    def close(self) -> None:
        """Stop every workflow process; their jobs stay running and resume at the next start."""
        self._stop.set()
        self._bump()
        with self._lock:
            flows = list(self._workflows.values())
            self._workflows.clear()
            writers = list(self._late_writers.values())
        for flow in flows:
            _proc.stop(flow.proc)
            flow.channel.close()
        for writer in writers:  # what it did not write stays stored: the next start writes it
            _proc.stop(writer)


class _Staging:
    """A fresh folder in the job store for one submission (beside the jobs, so renames stay on one file system).

    Removed with everything left in it when the with block ends.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._path: Path | None = None

    def __enter__(self) -> Path:
        self._path = Path(tempfile.mkdtemp(prefix=".submit-", dir=self._root))
        return self._path

    def __exit__(self, *exc: object) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)


_ABSOLUTE_PATH = re.compile(r"/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def public_text(text: str) -> str:
    """text with every absolute path cut to its last part ('.../name'): no server path reaches an admin."""
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}", text)


def exit_text(returncode: int) -> str:
    """Why a workflow process that wrote no result ended, from its exit status."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the workflow process was killed by {name} before it wrote its result"
    return f"the workflow process exited with status {returncode} before it wrote its result"


def last_lines(text: str, count: int) -> str:
    """The last count non-empty lines of text (a log's tail, whose first line may be cut)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def _disk_full(path: Path) -> bool:
    """Whether the file system of path has less than limits.SERVER_MIN_FREE_BYTES free (a write there failed)."""
    try:
        return shutil.disk_usage(path).free < limits.SERVER_MIN_FREE_BYTES
    except OSError:
        return False


def _listening(sock: Path) -> bool:
    """Whether a server listens on the Unix socket sock (a connection is made and dropped at once)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


def _read_signature(job_dir: Path) -> JobSignature:
    doc = json.loads((job_dir / _SIGNATURE).read_text())
    # A job stored before signatures named their job id has none: sites refuse it (sign it again).
    job_id, submit_time = str(doc.get("job_id", "")), int(doc.get("submit_time", 0))
    return JobSignature(base64.b64decode(doc["signature"]), doc["signer_cert"].encode(), job_id, submit_time)


def _status_part(status: fedsec_pb2.TaskStatus) -> fedsec_pb2.TaskPart:
    return fedsec_pb2.TaskPart(header=fedsec_pb2.TaskHeader(status=status))


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FEDSEC_")}


def _record_dict(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "name": record.name,
        "status": record.status.value,
        "submitter": record.submitter,
        "submit_time": record.submit_time,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "reason": record.reason,
        "num_rounds": record.num_rounds,
        "meta_json": record.meta_json,
    }
