"""The Admin gRPC service on the admin port: login, then authorised and audited commands.

Every call but GetChallenge and Login needs a live session token bound to the
caller's verified admin certificate. Each command is checked against the
server's authorization policy for the caller's role and recorded in the
audit log, allowed or refused.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedsec import __version__, _proc, _schema, limits
from fedsec.errors import AuthError, FedsecError, JobError, WireError
from fedsec.jobs.signing import JobSignature
from fedsec.kit import ServerConfig
from fedsec.pki.certs import Identity, Kind, Role
from fedsec.server.audit import AuditLog
from fedsec.server.authz import JobOwner, Policy, Right, Scope
from fedsec.server.jobs import JobManager
from fedsec.server.registry import SiteRegistry
from fedsec.server.sessions import AdminSessions
from fedsec.server.site_logs import capped_note, clean_text
from fedsec.server.store import MIN_ID_PREFIX, JobRecord, JobStore
from fedsec.transport.tls import peer_cert, require, rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

log = logging.getLogger(__name__)

SESSION_HEADER = "fedsec-session"
ALL_SITES = "*"  # get_job_log target: every site's reported error
T = TypeVar("T")


@dataclass
class AdminContext:
    """What the admin service works with."""

    config: ServerConfig
    store: JobStore
    jobs: JobManager
    registry: SiteRegistry
    sessions: AdminSessions
    audit: AuditLog
    policy: Policy
    request_stop: Callable[[], None]
    started_at: float
    replica: Callable[[], dict[str, object]] | None = None  # the server lease as check_status shows it (replicas)


def job_info(record: JobRecord, jobs: JobManager, *, progress: bool = True) -> fedsec_pb2.JobInfo:
    """A job for the wire; progress=False leaves out the per-round metrics (list_jobs)."""
    running = not record.status.finished
    return fedsec_pb2.JobInfo(
        job_id=record.job_id,
        name=record.name,
        status=record.status.value,
        submitter=record.submitter,
        submitter_org=record.submitter_org,
        submitter_role=record.submitter_role,
        submit_time=record.submit_time,
        start_time=record.start_time or 0.0,
        end_time=record.end_time or 0.0,
        reason=record.reason,
        current_round=jobs.current_round(record.job_id) if running else record.current_round,
        num_rounds=record.num_rounds,
        meta_json=record.meta_json,
        progress_json=jobs.progress(record.job_id) if progress else "",
    )


def _text(value: Any) -> fedsec_pb2.TextReply:
    return fedsec_pb2.TextReply(text=json.dumps(value))


class AdminService(fedsec_pb2_grpc.AdminServicer):
    def __init__(self, ctx: AdminContext) -> None:
        self._c = ctx
        # (session token, job, target) of the tail_job_log reads audited: a follower's next reads
        # (LogTailRequest.again) go unaudited only after one of these; oldest forgotten first
        self._followed: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._followed_lock = threading.Lock()

    # ------------------------------------------------------------ the gate

    def _run(
        self,
        context: grpc.ServicerContext,
        command: str,
        args: dict[str, Any],
        right: Right | None,
        job_id: str | None,
        action: Callable[[Identity, JobRecord | None], T],
        *,
        sites: Callable[[], Mapping[str, str] | None] | None = None,
        audit_allowed: bool = True,
    ) -> T:
        """Check session and right, run action, audit the outcome. right None: project_admin only.

        job_id: the job the command acts on (a WireError when it is not a job id), None for none.
        sites, for commands that act on sites: the targets' orgs by name, or None for the server
        itself or every site (see Policy.authorize_sites). audit_allowed=False: a call that goes on a
        command already audited (a followed log's next read) is audited only when refused or failed.
        """
        who = require(context, Kind.ADMIN)
        try:
            token = dict(context.invocation_metadata()).get(SESSION_HEADER, "")
            self._c.sessions.check(who, str(token))
            record = self._c.store.find(_job_id(job_id)) if job_id is not None else None
            if right is None:
                if who.role is not Role.PROJECT_ADMIN:
                    raise AuthError(f"{command} is for project admins only")
            elif sites is not None:
                self._c.policy.authorize_sites(who, right, sites())
            else:
                owner = JobOwner(record.submitter, record.submitter_org) if record else None
                self._c.policy.authorize(who, right, owner)
        except AuthError as exc:
            self._c.audit.record(who, command, args, "refused", str(exc))
            raise
        except (JobError, WireError) as exc:
            self._c.audit.record(who, command, args, "failed", str(exc))
            raise
        try:
            result = action(who, record)
        except FedsecError as exc:
            self._c.audit.record(who, command, args, "failed", str(exc))
            raise
        if audit_allowed:
            self._c.audit.record(who, command, args, "allowed")
        return result

    # ------------------------------------------------------------ login

    @rpc_boundary
    def GetChallenge(self, request: fedsec_pb2.Empty, context: grpc.ServicerContext) -> fedsec_pb2.ChallengeReply:
        who = require(context, Kind.ADMIN)
        return fedsec_pb2.ChallengeReply(nonce=self._c.sessions.challenge(who), expires_in=60.0)

    @rpc_boundary
    def Login(self, request: fedsec_pb2.LoginRequest, context: grpc.ServicerContext) -> fedsec_pb2.LoginReply:
        who = require(context, Kind.ADMIN)
        try:
            token = self._c.sessions.login(who, peer_cert(context), request.nonce, request.signature)
        except AuthError as exc:
            self._c.audit.record(who, "login", {}, "refused", str(exc))
            raise
        self._c.audit.record(who, "login", {}, "allowed")
        role = who.role.value if who.role else ""
        return fedsec_pb2.LoginReply(token=token, idle_timeout=self._c.sessions.idle_timeout, admin=who.name, role=role)

    # ------------------------------------------------------------ jobs

    @rpc_boundary
    def SubmitJob(
        self, request_iterator: Iterator[fedsec_pb2.SubmitPart], context: grpc.ServicerContext
    ) -> fedsec_pb2.JobInfo:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "info" or not first.HasField("signature"):
            raise WireError("job upload did not start with its size and signature")
        signature = _signature(first.signature)

        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.JobInfo:
            chunks = (_archive_chunk(p) for p in request_iterator)
            return job_info(self._c.jobs.submit(chunks, first.info, signature, who), self._c.jobs)

        return self._run(context, "submit_job", {"bytes": first.info.total_size}, Right.SUBMIT_JOB, None, action)

    @rpc_boundary
    def GetJobArchiveInfo(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> fedsec_pb2.JobArchiveInfo:
        def action(who: Identity, record: JobRecord | None) -> fedsec_pb2.JobArchiveInfo:
            assert record is not None
            digest, sig = self._c.jobs.archive_digest(record.job_id)
            return fedsec_pb2.JobArchiveInfo(
                job_id=record.job_id, archive_sha256=digest, signature=_signature_proto(sig)
            )

        return self._run(context, "clone_job", {"job": request.job_id}, Right.CLONE_JOB, request.job_id, action)

    @rpc_boundary
    def CloneJob(self, request: fedsec_pb2.CloneRequest, context: grpc.ServicerContext) -> fedsec_pb2.JobInfo:
        if not request.HasField("signature"):
            raise WireError("clone_job: the request carries no signature of the new job")
        signature = _signature(request.signature)

        def action(who: Identity, record: JobRecord | None) -> fedsec_pb2.JobInfo:
            assert record is not None
            return job_info(self._c.jobs.clone(record.job_id, signature, who), self._c.jobs)

        args = {"job": request.job_id, "new_job": signature.job_id[:40]}
        return self._run(context, "clone_job", args, Right.CLONE_JOB, request.job_id, action)

    @rpc_boundary
    def ListJobs(self, request: fedsec_pb2.ListJobsRequest, context: grpc.ServicerContext) -> fedsec_pb2.JobList:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.JobList:
            limit = min(request.max_results or limits.MAX_LIST_JOBS, limits.MAX_LIST_JOBS)
            records = self._c.store.list(name_prefix=request.name_prefix, id_prefix=request.id_prefix, limit=limit)
            scope = self._c.policy.scope(who.role, Right.VIEW) if who.role else Scope.NONE
            if scope is Scope.OWN_ORG:
                records = [r for r in records if r.submitter_org == who.org]
            elif scope is Scope.OWN_JOBS:
                records = [r for r in records if r.submitter == who.name]
            return fedsec_pb2.JobList(jobs=[job_info(r, self._c.jobs, progress=False) for r in records])

        args = {"name_prefix": request.name_prefix, "id_prefix": request.id_prefix}
        return self._run(context, "list_jobs", args, Right.VIEW, None, action)

    @rpc_boundary
    def GetJobMeta(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> fedsec_pb2.JobInfo:
        return self._run(
            context, "get_job_meta", {"job": request.job_id}, Right.VIEW, request.job_id,
            lambda who, record: job_info(record, self._c.jobs),  # type: ignore[arg-type]
        )  # fmt: skip

    @rpc_boundary
    def AbortJob(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> fedsec_pb2.JobInfo:
        def action(who: Identity, record: JobRecord | None) -> fedsec_pb2.JobInfo:
            assert record is not None
            return job_info(self._c.jobs.abort(record.job_id, who), self._c.jobs)

        return self._run(context, "abort_job", {"job": request.job_id}, Right.MANAGE_JOB, request.job_id, action)

    @rpc_boundary
    def DeleteJob(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        def action(who: Identity, record: JobRecord | None) -> fedsec_pb2.Empty:
            assert record is not None
            self._c.jobs.delete(record.job_id)
            return fedsec_pb2.Empty()

        return self._run(context, "delete_job", {"job": request.job_id}, Right.MANAGE_JOB, request.job_id, action)

    @rpc_boundary
    def DownloadJob(
        self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[fedsec_pb2.ArchivePart]:
        path = self._run(
            context, "download_job", {"job": request.job_id}, Right.DOWNLOAD_JOB, request.job_id,
            lambda who, record: self._c.jobs.result_archive(record.job_id),  # type: ignore[union-attr]
        )  # fmt: skip
        try:  # the file is this download's own: streamed from disk, removed however the stream ends
            yield fedsec_pb2.ArchivePart(info=streams.describe_file(path))
            for chunk in streams.file_chunks(path):
                yield fedsec_pb2.ArchivePart(data=chunk)
        finally:
            path.unlink(missing_ok=True)

    @rpc_boundary
    def GetJobLog(self, request: fedsec_pb2.TargetRequest, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        def action(who: Identity, record: JobRecord | None) -> fedsec_pb2.TextReply:
            assert record is not None
            target = request.target or "server"
            if target == "server":
                return _text({"log": self._c.jobs.workflow_log(record.job_id)})
            sites = self._c.jobs.site_records(record.job_id)
            if target == ALL_SITES:
                return _text({"errors": {s: r["error"] for s, r in sites.items() if r.get("error")}})
            return _text({"log": self._site_log(record.job_id, target, sites.get(target))})

        args = {"job": request.job_id, "target": request.target}
        return self._run(context, "get_job_log", args, Right.DOWNLOAD_JOB, request.job_id, action)

    def _site_log(self, job_id: str, site: str, report: Mapping[str, str] | None) -> str:
        """The end of site's log of a job: what it sent while the script ran, else the tail it reported at the end.

        A log the server stopped keeping (its cap) is followed by the end the site reported, when it did.
        """
        sent = self._c.jobs.site_logs(job_id).tail(site, limits.MAX_LOG_TEXT)
        reported = clean_text(report.get("log", "").encode()) if report is not None else None
        if sent is None and reported is None:
            raise JobError(f"job {job_id}: no log from {site} yet (a site sends its log while the job's script runs)")
        if sent is None:
            return reported or ""
        if reported and sent.endswith(capped_note()):
            return sent + "[fedsec] the end of the log, as the site reported it when the script ended:\n" + reported
        return sent

    @rpc_boundary
    def TailJobLog(self, request: fedsec_pb2.LogTailRequest, context: grpc.ServicerContext) -> fedsec_pb2.LogTail:
        """New lines of the sites' logs of a job from the reader's cursors (tail_job_log, download_job_log)."""
        if len(request.cursors) > limits.MAX_PARTICIPANTS:
            raise WireError(f"tail_job_log: more than {limits.MAX_PARTICIPANTS} cursors")

        def action(who: Identity, record: JobRecord | None) -> fedsec_pb2.LogTail:
            assert record is not None
            logs = self._c.jobs.site_logs(record.job_id)
            cursors = {c.site: c.offset for c in request.cursors}
            sites = [request.site] if request.site else logs.sites()
            budget = limits.MAX_LOG_REPLY_BYTES
            reply = fedsec_pb2.LogTail(status=record.status.value)
            growing = not record.status.finished
            for site in sites:
                offset = cursors.get(site)
                limit = min(budget, limits.MAX_LOG_TEXT)
                if offset is None and not request.from_start:
                    limit = min(limit, limits.LOG_TAIL_BYTES)
                if limit <= 0:  # this reply is full: the reader asks again at once (more), from here
                    if offset is None:
                        offset = 0 if request.from_start else max(0, logs.size(site) - limits.LOG_TAIL_BYTES)
                    reply.logs.add(site=site, offset=offset, more=logs.has(site))
                    continue
                piece = logs.read(site, offset, limit, from_start=request.from_start, whole_lines=growing)
                budget -= len(piece.text.encode())
                reply.logs.add(
                    site=site, offset=piece.offset, text=piece.text, more=piece.more, closed=piece.closed,
                    full=piece.full,
                )  # fmt: skip
            return reply

        args = {"job": request.job_id, "target": request.site or ALL_SITES}
        # 'again' is the caller's word: it skips the audit only for a read this session's audited read began
        token = str(dict(context.invocation_metadata()).get(SESSION_HEADER, ""))
        key = (token, request.job_id, args["target"])
        with self._followed_lock:
            audited = not request.again or key not in self._followed
        reply = self._run(
            context, "tail_job_log", args, Right.DOWNLOAD_JOB, request.job_id, action, audit_allowed=audited
        )
        if audited:
            with self._followed_lock:
                self._followed[key] = None
                self._followed.move_to_end(key)
                while len(self._followed) > limits.MAX_FOLLOWED_LOGS:
                    self._followed.popitem(last=False)
        return reply

    # ------------------------------------------------------------ sites and the server

    def _clients(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        alive = [
            {
                "name": s.name, "org": s.org, "alive": True, "last_seen": round(now - s.last_seen, 1),
                "registered_at": s.registered_at, "running_jobs": list(s.running_jobs), "version": s.version,
                "removed": False,
            }
            for s in self._c.registry.sites()
        ]  # fmt: skip
        removed = [{"name": n, "org": "", "alive": False, "removed": True} for n in sorted(self._c.registry.removed())]
        return alive + removed

    def _site_orgs(self, names: list[str] | None) -> Callable[[], Mapping[str, str] | None]:
        """The orgs of the named sites, for Policy.authorize_sites; None: the server or every site."""
        if names is None:
            return lambda: None
        if len(names) > limits.MAX_SITES_PER_REQUEST:
            raise WireError(f"more than {limits.MAX_SITES_PER_REQUEST} sites named in one request")
        return lambda: {name: self._c.registry.org_of(name) for name in names}

    @rpc_boundary
    def ListClients(self, request: fedsec_pb2.Empty, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        return self._run(context, "list_clients", {}, Right.VIEW, None, lambda who, _: _text(self._clients()))

    @rpc_boundary
    def RemoveClient(self, request: fedsec_pb2.SiteRef, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.Empty:
            cert_fp = self._c.registry.fingerprint_of(request.site)
            if cert_fp is None:
                raise JobError(f"site {request.site!r} is not connected; only a connected site can be removed")
            self._c.registry.remove(request.site, cert_fp)
            self._c.jobs.wake_sites()
            return fedsec_pb2.Empty()

        target = self._site_orgs([request.site])
        return self._run(context, "remove_client", {"site": request.site}, Right.OPERATE, None, action, sites=target)

    @rpc_boundary
    def EnableClient(self, request: fedsec_pb2.SiteRef, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.Empty:
            if not self._c.registry.enable(request.site):
                raise JobError(f"site {request.site!r} was not removed")
            return fedsec_pb2.Empty()

        target = self._site_orgs([request.site])
        return self._run(context, "enable_client", {"site": request.site}, Right.OPERATE, None, action, sites=target)

    @rpc_boundary
    def CheckStatus(self, request: fedsec_pb2.TargetRequest, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.TextReply:
            if request.target == "client":
                wanted = set(request.sites)
                return _text({"sites": [c for c in self._clients() if not wanted or c["name"] in wanted]})
            running = [r.job_id for r in self._c.store.unfinished()]
            status: dict[str, object] = {
                "server": self._c.config.name, "project": self._c.config.project, "status": "running",
                "uptime": round(time.time() - self._c.started_at, 1), "running_jobs": running,
                "sites_alive": len(self._c.registry.alive()),
            }  # fmt: skip
            if self._c.replica is not None:  # which replica is active, and since when it holds the lease
                status.update(self._c.replica())
            return _text(status)

        args = {"target": request.target, "sites": ",".join(request.sites)}
        return self._run(context, "check_status", args, Right.VIEW, None, action)

    @rpc_boundary
    def SysInfo(self, request: fedsec_pb2.TargetRequest, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.TextReply:
            target = request.target or "server"
            if target == "server":
                return _text(_proc.host_info())
            site = self._c.registry.get(target)
            if site is None:
                raise JobError(f"site {target!r} is not connected")
            where = f"site {target!r}: system information"
            return _text(
                _schema.parse_json(site.sys_info or "{}", where, limit=limits.MAX_SYS_INFO_BYTES, error=JobError)
            )

        target = self._site_orgs([request.target] if request.target not in ("", "server") else None)
        return self._run(context, "sys_info", {"target": request.target}, Right.OPERATE, None, action, sites=target)

    @rpc_boundary
    def Version(self, request: fedsec_pb2.Empty, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.TextReply:
            return _text({"server": __version__, "sites": {s.name: s.version for s in self._c.registry.sites()}})

        return self._run(context, "version", {}, Right.VIEW, None, action)

    @rpc_boundary
    def Shutdown(self, request: fedsec_pb2.TargetRequest, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        def action(who: Identity, _: JobRecord | None) -> fedsec_pb2.TextReply:
            target = request.target
            if target not in ("server", "client", "all"):
                raise JobError(f"shutdown: target must be server, client or all, not {target!r}")
            sites: set[str] = set()
            if target in ("client", "all"):
                sites = set(request.sites) or set(self._c.registry.alive())
                self._c.registry.request_shutdown(sites)
                self._c.jobs.wake_sites()
            if target in ("server", "all"):
                delay = 3.0 if target == "all" else 0.5  # let the sites hear theirs first
                threading.Timer(delay, self._c.request_stop).start()
            return _text({"server": target in ("server", "all"), "sites": sorted(sites)})

        args = {"target": request.target, "sites": ",".join(request.sites)}
        named = list(request.sites) if request.target == "client" and request.sites else None
        return self._run(context, "shutdown", args, Right.OPERATE, None, action, sites=self._site_orgs(named))

    @rpc_boundary
    def ShowAudit(self, request: fedsec_pb2.TargetRequest, context: grpc.ServicerContext) -> fedsec_pb2.TextReply:
        count = min(request.max_results or 50, limits.MAX_AUDIT_ENTRIES)
        return self._run(
            context, "show_audit", {"max": count}, None, None, lambda who, _: _text(self._c.audit.tail(count))
        )


_JOB_REF = re.compile(rf"[0-9a-fA-F-]{{{MIN_ID_PREFIX},36}}")


def _job_id(value: str) -> str:
    """value, which must be a job id or its first characters; WireError (INVALID_ARGUMENT) otherwise, '' included."""
    if not _JOB_REF.fullmatch(value):
        raise WireError(
            f"job id {value[:40]!r} is not a job id (give a job id, or at least its first {MIN_ID_PREFIX} characters)"
        )
    return value


def _signature(msg: fedsec_pb2.JobSignature) -> JobSignature:
    """A job signature from the wire, its sizes bounded before anything reads it; WireError otherwise."""
    if len(msg.signer_cert) > limits.MAX_SIGNER_CERT_BYTES:
        raise WireError(f"job signature: signer certificate is larger than {limits.MAX_SIGNER_CERT_BYTES} bytes")
    if len(msg.signature) > limits.MAX_JOB_SIGNATURE_BYTES:
        raise WireError(f"job signature: signature is larger than {limits.MAX_JOB_SIGNATURE_BYTES} bytes")
    return JobSignature(msg.signature, msg.signer_cert, msg.job_id, msg.submit_time)


def _archive_chunk(part: fedsec_pb2.SubmitPart) -> bytes:
    if part.WhichOneof("part") != "data":
        raise WireError("job upload: after its first message, an upload carries only data chunks")
    return part.data


def _signature_proto(sig: JobSignature) -> fedsec_pb2.JobSignature:
    return fedsec_pb2.JobSignature(
        signature=sig.signature, signer_cert=sig.signer_cert, job_id=sig.job_id, submit_time=sig.submit_time
    )
