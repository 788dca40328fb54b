"""The site's connection to the server: register, heartbeat, fetch jobs, report their end.

Clients only dial out. While the server does not answer the agent dials it
again, on a fresh connection, every 0.1 s for its first 10 s of trying (a site
started with its server registers as soon as the server listens), then with
backoff; after it comes back the agent registers again and carries on. A
server of several replicas is tried in the kit's order: when the replica in use
stops answering (nothing listens, the link is down, or it says it is a standby),
registration moves to the next endpoint at once, pausing with backoff only after
a whole round of them failed, and every call of the site, its jobs' relays
included, follows (fedsec.site.connection).

Heartbeats never wait behind a transfer: they run on a connection of their
own, and the heartbeat loop only records the server's assignments; a worker
thread fetches, starts and stops jobs. Every transfer retries transient errors
(fedsec.site.transfer), and a job archive's download resumes where it broke. Each job's
log goes to the server while its script runs (fedsec.site.logship).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import grpc

from fedsec import __version__, _proc, limits
from fedsec.errors import FedsecError, KitError
from fedsec.kit import HE_CLIENT_CONTEXT, ClientConfig, Kit, read_ca
from fedsec.pki.identity import Kind
from fedsec.site.connection import ServerConnection
from fedsec.site.hekey import HEKey
from fedsec.site.local import LocalEndpoints
from fedsec.site.logship import LogShipper
from fedsec.site.runner import JobRunner
from fedsec.site.spool import EventSpool
from fedsec.site.transfer import ArchiveDownload, GaveUpError, retry
from fedsec.tracking.events import Event, to_proto
from fedsec.transport.failover import Endpoints, address, fails_over, is_standby
from fedsec.transport.local import socket_dir
from fedsec.transport.tls import error_from_rpc
from fedsec.wire import fedsec_pb2

if TYPE_CHECKING:  # what only jobs need is imported when the first job comes: an idle site never loads it
    from fedsec.jobs.signing import JobSignature

log = logging.getLogger(__name__)

_HOLD_SECONDS = 5.0  # how long the server may hold a heartbeat waiting for a change
REPORT_SECONDS = 600.0  # how long a site keeps trying to report a job's end through a bad link
QUICK_RETRY_SECONDS = 0.1  # how often a site dials a server that does not answer, for the first QUICK_RETRY_PHASE s
QUICK_RETRY_PHASE = 10.0  # of each time it (re)registers (a loaded host starts a server in seconds); then 0.2 s to 5 s
STANDBY_RETRY_SECONDS = 0.5  # while a standby replica answers: it takes over within its lease's ttl, be there then


class SiteAgent:
    """The client parent of one site."""

    def __init__(self, kit: Kit) -> None:
        if kit.kind is not Kind.CLIENT or not isinstance(kit.config, ClientConfig):
            raise KitError(f"kit {kit.name}: is a {kit.kind.value} kit, not a client kit")
        _proc.lock_kit(kit.root / "run", f"site {kit.name}")
        self._kit = kit
        self._config: ClientConfig = kit.config
        self._server = ServerConnection(kit, Endpoints(self._config.endpoints))
        self._stop = threading.Event()
        self._assigned: frozenset[str] = frozenset()  # the jobs of the last heartbeat reply
        self._sync_due = threading.Event()
        self._spool = EventSpool(kit.root / "tracking")
        self._events_due = threading.Event()
        self._he = HEKey(kit.root / "startup" / HE_CLIENT_CONTEXT)
        self._endpoints = LocalEndpoints(
            socket_dir(kit.root / "run", "jobs"),
            kit.name,
            self._server.stub,
            self._spool,
            self._events_due.set,
            self._he.context,
        )
        self._logs = LogShipper(kit.name, self._server.stub)
        self._runner = JobRunner(
            kit.root,
            kit.name,
            self._endpoints,
            self._he,
            self._report,
            functools.partial(read_ca, kit),
            logs=self._logs,
        )
        self._forwarder = threading.Thread(target=self._forward_loop, name="events", daemon=True)
        self._worker = threading.Thread(target=self._jobs_loop, name="jobs", daemon=True)

    def run(self) -> None:
        """Register and heartbeat until stopped (SIGTERM / SIGINT)."""
        self._forwarder.start()
        self._worker.start()
        threading.Thread(target=self._runner.retention_loop, args=(self._stop,), name="retention", daemon=True).start()
        threading.Thread(target=self._logs.run, args=(self._stop,), name="job-logs", daemon=True).start()
        threading.Thread(target=self._runner.warm_loop, args=(self._stop,), name="warm", daemon=True).start()
        try:
            while not self._stop.is_set():
                self._register()
                self._heartbeats()
        finally:
            self._stop.set()
            self._sync_due.set()
            self._worker.join(timeout=10)
            self._runner.stop_all()
            self._endpoints.close_all()
            self._server.close()
            log.info("site=%s stopped", self._kit.name)

    def stop(self, *_: object) -> None:
        self._stop.set()
        self._sync_due.set()
        # Closing cancels a held heartbeat and a transfer in flight at once, so SIGTERM is quick. From a thread of
        # its own: the signal handler runs on the main thread, which may be inside the connection's lock right now
        # (opening or renewing a channel), and would wait for itself.
        threading.Thread(target=self._server.close, name="close", daemon=True).start()

    def _register(self) -> None:
        """Register with the endpoint in use, else the next ones in turn; back off after a whole round failed.

        While nothing answers at all (the server is not listening yet: a site started
        with its server), the site dials again every QUICK_RETRY_SECONDS on a fresh
        channel for the first QUICK_RETRY_PHASE seconds, so it registers as soon as
        the server listens; after that it backs off from 0.2 s to 5 s. While a standby
        replica answers (the active one died; a standby takes over once the lease
        lapses), it goes round the endpoints every STANDBY_RETRY_SECONDS, never backing
        off further, so it registers within that of the takeover.
        """
        delay = 0.2
        failed = 0  # endpoints that failed in a row since the last pause
        quick_until = time.monotonic() + QUICK_RETRY_PHASE
        said_quick = False
        standby_seen = False  # a standby answered since the last pause
        while not self._stop.is_set():
            index, where = self._server.index, self._server.address
            try:
                request = fedsec_pb2.RegisterRequest(
                    fedsec_version=__version__, sys_info_json=json.dumps(_proc.host_info())
                )
                reply = self._server.live().Register(request, timeout=10)
            except grpc.RpcError as exc:
                err = error_from_rpc(exc, "register", where)
                reason = "a standby replica" if is_standby(exc) else str(err)
                standby_seen = standby_seen or is_standby(exc)
                if fails_over(exc) and self._server.count > 1:
                    failed += 1
                    following = address(self._server.fail_over(index))
                    if failed < self._server.count:
                        log.info(
                            "site=%s cannot register at %s (%s); trying %s", self._kit.name, where, reason, following
                        )
                        continue
                failed = 0
                unanswered = _unanswered(exc)
                if unanswered and time.monotonic() < quick_until:
                    level = logging.DEBUG if said_quick else logging.INFO
                    log.log(
                        level, "site=%s cannot register yet (%s); retrying every %.1f s for up to %.0f s",
                        self._kit.name, reason, QUICK_RETRY_SECONDS, QUICK_RETRY_PHASE,
                    )  # fmt: skip
                    said_quick = True
                    pause = QUICK_RETRY_SECONDS
                elif standby_seen:
                    log.info("site=%s: a standby replica answers; trying again in %.1f s", self._kit.name,
                             STANDBY_RETRY_SECONDS)  # fmt: skip
                    pause = STANDBY_RETRY_SECONDS
                else:
                    log.info("site=%s cannot register yet (%s); retrying in %.1f s", self._kit.name, reason, delay)
                    pause, delay = delay, min(delay * 2, 5.0)
                standby_seen = False
                self._stop.wait(pause)
                if unanswered:
                    self._server.renew_live()  # dial now, not when the failed channel's own backoff ends
                continue
            log.info(
                "site=%s registered with server=%s at %s project=%s",
                self._kit.name, reply.server_name, where, reply.project,
            )  # fmt: skip
            return

    def _heartbeats(self) -> None:
        version = 0
        while not self._stop.is_set():
            request = fedsec_pb2.HeartbeatRequest(running_jobs=sorted(self._runner.running()), known_version=version)
            try:
                reply = self._server.live().Heartbeat(request, timeout=_HOLD_SECONDS + 10)
            except grpc.RpcError as exc:
                log.warning("site=%s heartbeat failed: %s", self._kit.name, error_from_rpc(exc, "heartbeat"))
                self._stop.wait(0.5)
                return  # register again
            version = reply.version
            if reply.shutdown:
                log.info("site=%s: an admin asked this site to shut down", self._kit.name)
                self._stop.set()
                return
            assigned = frozenset(j.job_id for j in reply.jobs)
            if assigned != self._assigned:
                self._assigned = assigned  # the worker starts and stops jobs; the heartbeat goes on at once
            self._sync_due.set()

    def _jobs_loop(self) -> None:
        """Start assigned jobs (fetching their archives) and stop the others, off the heartbeat's thread."""
        while not self._stop.is_set():
            self._sync_due.wait(1.0)
            self._sync_due.clear()
            if self._stop.is_set():
                return
            try:
                self._runner.sync(set(self._assigned), self._fetch)
            except FedsecError as exc:
                log.error("site=%s job sync failed: %s", self._kit.name, exc)
                self._stop.wait(1.0)

    def _fetch(self, job_id: str) -> tuple[bytes, JobSignature]:
        """The job's archive and signature, retried and resumed for as long as the server assigns the job here.

        Raises GaveUpError when the job is no longer assigned (or the site stops), and
        the fedsec error of a final failure (a refusal, a corrupt archive).
        """
        download = ArchiveDownload(self._server.stub, job_id, self._kit.root / "run" / "fetch")
        return download.run(float("inf"), lambda: job_id in self._assigned, self._stop)

    def _forward_loop(self) -> None:
        """Send spooled tracking events to the server as they come, and again after a restart."""
        delay = 0.5
        while not self._stop.is_set():
            self._events_due.wait(delay)
            self._events_due.clear()
            try:
                for job_id in self._spool.jobs():
                    if self._spool.pending(job_id):
                        self._spool.forward(job_id, self._send_events)
                delay = 0.5
            except FedsecError as exc:
                log.info("site=%s events not forwarded yet: %s", self._kit.name, exc)
                delay = min(delay * 2, 5.0)

    def _send_events(self, job_id: str, events: list[Event]) -> None:
        batch = fedsec_pb2.EventBatch(job_id=job_id, events=[to_proto(e) for e in events])
        try:
            self._server.stub().SendEvents(batch, timeout=30)
        except grpc.RpcError as exc:
            err = error_from_rpc(exc, f"events of job {job_id}")
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                # refused for good (the job ended longer ago than the server keeps late events, or is deleted)
                log.warning(
                    "site=%s job=%s: the server refused its events for good (%s); dropping them",
                    self._kit.name,
                    job_id,
                    err,
                )
                self._spool.discard(job_id)
                return
            raise err from exc

    def _drain_events(self, job_id: str, timeout: float = 30.0) -> None:
        """Forward every spooled event of a job before reporting its end (the server waits for that report)."""
        deadline = time.monotonic() + timeout
        while self._spool.pending(job_id) and time.monotonic() < deadline:
            try:
                self._spool.forward(job_id, self._send_events)
            except FedsecError as exc:
                log.info("site=%s job=%s events not drained yet: %s", self._kit.name, job_id, exc)
                time.sleep(0.5)

    def _report(self, job_id: str, failed: bool, error: str, log_tail: str) -> None:
        self._drain_events(job_id)
        outcome = fedsec_pb2.JOB_OUTCOME_FAILED if failed else fedsec_pb2.JOB_OUTCOME_FINISHED
        request = fedsec_pb2.JobReport(
            job_id=job_id,
            outcome=outcome,
            error=error[-limits.MAX_ERROR_TEXT :],
            log_tail=log_tail[-limits.MAX_LOG_TEXT :],
        )
        deadline = time.monotonic() + REPORT_SECONDS
        try:
            retry(
                lambda: self._server.stub().ReportJob(request, timeout=10),
                f"report job {job_id}",
                deadline,
                stop=self._stop,
            )
        except GaveUpError:
            return  # the site stops: the server learns of the job's end when the site comes back
        if not self._spool.pending(job_id):
            self._spool.discard(job_id)


def _unanswered(exc: grpc.RpcError) -> bool:
    """Whether a call failed because no server answered (nothing listens, the link is down), not a standby's reply."""
    return isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE and not is_standby(exc)


def run_site(kit: Kit) -> int:
    """Run the client parent of kit until SIGTERM or SIGINT; return the exit status."""
    agent = SiteAgent(kit)

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ends = kit.config.endpoints if isinstance(kit.config, ClientConfig) else ()
    log.info("site=%s starting; server=%s", kit.name, ", ".join(address(e) for e in ends) or "?")
    agent.run()
    return 0
