"""The Federation gRPC service on the fl port: what sites call.

Every call is authorised by the verified certificate of its peer: only site
certificates, not removed by an admin. A site acts only as itself and only
on jobs assigned to it, and reports the end of a job's script only for a job
it fetched.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from fedsec import _schema, limits
from fedsec.errors import AuthError, JobError, WireError
from fedsec.jobs.signing import check_job_id
from fedsec.kit import ServerConfig
from fedsec.logs import RateLimitedLog
from fedsec.pki.certs import Kind, identity_of
from fedsec.server.jobs import JobManager
from fedsec.server.registry import SiteRegistry
from fedsec.transport.tls import fingerprint, peer_cert, rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

log = logging.getLogger(__name__)
# A site that registers in a loop logs a few lines a minute (a restarted site still shows at once).
_REGISTERED = RateLimitedLog(log, interval=60.0, burst=8)

_HOLD_SECONDS = 5.0


class FederationService(fedsec_pb2_grpc.FederationServicer):
    def __init__(self, config: ServerConfig, registry: SiteRegistry, jobs: JobManager) -> None:
        self._config = config
        self._registry = registry
        self._jobs = jobs
        self._digest_lock = threading.Lock()
        self._digests: dict[tuple[str, int, int, int], fedsec_pb2.PayloadInfo] = {}

    def _site(self, context: grpc.ServicerContext, **changes: object) -> str:
        cert = peer_cert(context)
        identity = identity_of(cert)
        if identity.kind is not Kind.CLIENT:
            raise AuthError(f"a {identity.kind.value} certificate ({identity.name}) is not accepted here")
        cert_fp = fingerprint(cert)
        self._registry.check_allowed(identity.name, cert_fp)
        self._registry.seen(identity.name, identity.org, fingerprint=cert_fp, **changes)
        return identity.name

    def _archive_info(self, f: BinaryIO, path: Path) -> fedsec_pb2.PayloadInfo:
        """Size and SHA-256 of an open stored archive, hashed once per file rather than once per fetch."""
        st = os.fstat(f.fileno())
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._digest_lock:
            known = self._digests.get(key)
        if known is None:
            known = streams.describe_stream(f)
            with self._digest_lock:
                if len(self._digests) >= limits.MAX_RUNNING_JOBS * 4:
                    self._digests.clear()  # a handful of recent jobs is all a fetch ever needs
                self._digests[key] = known
        return known

    def _assigned(self, job_id: str, site: str) -> None:
        try:
            check_job_id(job_id)
        except JobError as exc:
            raise WireError(str(exc)) from exc
        if not self._jobs.may_run(job_id, site):
            raise AuthError(f"job {job_id} is not assigned to {site}")

    @rpc_boundary
    def Register(self, request: fedsec_pb2.RegisterRequest, context: grpc.ServicerContext) -> fedsec_pb2.RegisterReply:
        info = _schema.parse_json(
            request.sys_info_json or "{}",
            "register: system information",
            limit=limits.MAX_SYS_INFO_BYTES,
            error=WireError,
        )
        if not isinstance(info, dict):
            raise WireError("register: system information is not a JSON object")
        site = self._site(context, version=request.fedsec_version[:32], sys_info=json.dumps(info))
        _REGISTERED.log(logging.INFO, site, "site=%s registered version=%s", site, request.fedsec_version[:32])
        return fedsec_pb2.RegisterReply(server_name=self._config.name, project=self._config.project)

    @rpc_boundary
    def Heartbeat(
        self, request: fedsec_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> fedsec_pb2.HeartbeatReply:
        running = tuple(request.running_jobs[: limits.MAX_RUNNING_JOBS])
        site = self._site(context, running_jobs=running)
        self._jobs.note_running(site, running)
        # hold well inside the heartbeat timeout, so a held site never looks gone
        hold = min(_HOLD_SECONDS, self._config.heartbeat_timeout / 3)
        version = self._jobs.wait_change(request.known_version, hold)
        self._site(context)
        if self._registry.take_shutdown(site):
            log.info("site=%s asked to shut down", site)
            return fedsec_pb2.HeartbeatReply(version=version, shutdown=True)
        jobs = [fedsec_pb2.JobAssignment(job_id=j, name=n) for j, n in self._jobs.assignments(site)]
        return fedsec_pb2.HeartbeatReply(jobs=jobs, version=version)

    @rpc_boundary
    def FetchJob(
        self, request: fedsec_pb2.FetchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[fedsec_pb2.ArchivePart]:
        """The whole archive's size, digest and signature, then its bytes from request.offset (a resumed download)."""
        site = self._site(context)
        self._assigned(request.job_id, site)
        path, sig = self._jobs.archive_file(request.job_id)
        signature = fedsec_pb2.JobSignature(
            signature=sig.signature, signer_cert=sig.signer_cert, job_id=sig.job_id, submit_time=sig.submit_time
        )
        with path.open("rb") as f:  # one open file: streamed, never whole in memory
            info = self._archive_info(f, path)
            if request.offset > info.total_size:
                size = info.total_size
                raise WireError(f"job {request.job_id}: offset {request.offset} is past the archive's {size} bytes")
            yield fedsec_pb2.ArchivePart(info=info, signature=signature)
            f.seek(request.offset)
            while chunk := f.read(limits.CHUNK_BYTES):
                yield fedsec_pb2.ArchivePart(data=chunk)
        self._jobs.fetched(request.job_id, site)  # the whole archive went out: the site may now report on the job

    @rpc_boundary
    def GetTask(self, request: fedsec_pb2.TaskRequest, context: grpc.ServicerContext) -> Iterator[fedsec_pb2.TaskPart]:
        site = self._site(context)
        self._assigned(request.job_id, site)
        wait = min(max(request.wait_seconds, 0.0), 30.0)
        held = streams.held_digests(request.held_sha256, f"task request of {site}")
        yield from self._jobs.get_task(request.job_id, site, wait, held)

    @rpc_boundary
    def SubmitResult(
        self, request_iterator: Iterator[fedsec_pb2.ResultPart], context: grpc.ServicerContext
    ) -> fedsec_pb2.ResultReply:
        site = self._site(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise WireError("result stream did not start with a header")
        self._assigned(first.header.job_id, site)
        return self._jobs.submit_result(first.header.job_id, site, first.header, request_iterator)

    @rpc_boundary
    def SendEvents(self, request: fedsec_pb2.EventBatch, context: grpc.ServicerContext) -> fedsec_pb2.EventAck:
        site = self._site(context)
        self._assigned(request.job_id, site)
        if len(request.events) > limits.MAX_EVENTS_PER_BATCH:
            raise WireError(f"more than {limits.MAX_EVENTS_PER_BATCH} events in one batch")
        request.site = site  # from the verified certificate, never from the site
        return self._jobs.send_events(request)

    @rpc_boundary
    def AppendJobLog(self, request: fedsec_pb2.JobLogChunk, context: grpc.ServicerContext) -> fedsec_pb2.JobLogAck:
        """A piece of the site's log of a job it fetched (running, ended or aborted): stored under the job."""
        site = self._site(context)
        try:
            check_job_id(request.job_id)
        except JobError as exc:
            raise WireError(str(exc)) from exc
        if len(request.data) > limits.MAX_LOG_CHUNK_BYTES:
            raise WireError(f"job log: a piece of more than {limits.MAX_LOG_CHUNK_BYTES} bytes")
        return self._jobs.append_site_log(request.job_id, site, request)

    @rpc_boundary
    def ReportJob(self, request: fedsec_pb2.JobReport, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        site = self._site(context)
        self._assigned(request.job_id, site)
        failed = request.outcome == fedsec_pb2.JOB_OUTCOME_FAILED
        error = request.error[: limits.MAX_ERROR_TEXT]
        self._jobs.report(request.job_id, site, failed, error, request.log_tail[-limits.MAX_LOG_TEXT :])
        return fedsec_pb2.Empty()
