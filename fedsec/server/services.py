"""The server's gRPC services: Federation on the fl port (sites), Admin on the admin port.

Every call is authorised by the verified certificate of its peer: only site
certificates on the fl port, only admin certificates on the admin port. A
site acts only as itself and only on jobs assigned to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from fedsec import limits
from fedsec.errors import AuthError, WireError
from fedsec.kit import ServerConfig
from fedsec.pki.certs import Kind
from fedsec.server.jobs import JobManager
from fedsec.server.registry import SiteRegistry
from fedsec.server.store import JobRecord, JobStore
from fedsec.transport.tls import require, rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

log = logging.getLogger(__name__)

_HOLD_SECONDS = 5.0


class FederationService(fedsec_pb2_grpc.FederationServicer):
    def __init__(self, config: ServerConfig, registry: SiteRegistry, jobs: JobManager) -> None:
        self._config = config
        self._registry = registry
        self._jobs = jobs

    def _site(self, context: grpc.ServicerContext) -> str:
        identity = require(context, Kind.CLIENT)
        self._registry.seen(identity.name, identity.org)
        return identity.name

    def _assigned(self, job_id: str, site: str) -> None:
        if not self._jobs.may_run(job_id, site):
            raise AuthError(f"job {job_id} is not assigned to {site}")

    @rpc_boundary
    def Register(self, request: fedsec_pb2.RegisterRequest, context: grpc.ServicerContext) -> fedsec_pb2.RegisterReply:
        site = self._site(context)
        log.info("site=%s registered version=%s", site, request.fedsec_version[:32])
        return fedsec_pb2.RegisterReply(server_name=self._config.name, project=self._config.project)

    @rpc_boundary
    def Heartbeat(
        self, request: fedsec_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> fedsec_pb2.HeartbeatReply:
        site = self._site(context)
        version = self._jobs.wait_change(request.known_version, _HOLD_SECONDS)
        self._registry.seen(site, "")
        jobs = [fedsec_pb2.JobAssignment(job_id=j, name=n) for j, n in self._jobs.assignments(site)]
        return fedsec_pb2.HeartbeatReply(jobs=jobs, version=version)

    @rpc_boundary
    def FetchJob(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> Iterator[fedsec_pb2.ArchivePart]:
        site = self._site(context)
        self._assigned(request.job_id, site)
        data = self._jobs.archive(request.job_id)
        yield fedsec_pb2.ArchivePart(info=streams.describe_bytes(data))
        for chunk in streams.bytes_chunks(data):
            yield fedsec_pb2.ArchivePart(data=chunk)

    @rpc_boundary
    def GetTask(self, request: fedsec_pb2.TaskRequest, context: grpc.ServicerContext) -> Iterator[fedsec_pb2.TaskPart]:
        site = self._site(context)
        self._assigned(request.job_id, site)
        wait = min(max(request.wait_seconds, 0.0), 30.0)
        yield from self._jobs.get_task(request.job_id, site, wait)

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
    def ReportJob(self, request: fedsec_pb2.JobReport, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        site = self._site(context)
        self._assigned(request.job_id, site)
        failed = request.outcome == fedsec_pb2.JOB_OUTCOME_FAILED
        self._jobs.report(request.job_id, site, failed, request.error[: limits.MAX_ERROR_TEXT])
        return fedsec_pb2.Empty()


class AdminService(fedsec_pb2_grpc.AdminServicer):
    def __init__(self, store: JobStore, jobs: JobManager) -> None:
        self._store = store
        self._jobs = jobs

    def _info(self, record: JobRecord) -> fedsec_pb2.JobInfo:
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
            current_round=self._jobs.current_round(record.job_id) if running else record.current_round,
            num_rounds=record.num_rounds,
            meta_json=record.meta_json,
            progress_json=self._jobs.progress(record.job_id),
        )

    @rpc_boundary
    def SubmitJob(
        self, request_iterator: Iterator[fedsec_pb2.SubmitPart], context: grpc.ServicerContext
    ) -> fedsec_pb2.JobInfo:
        who = require(context, Kind.ADMIN)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "info":
            raise WireError("job upload did not start with its size")
        data = streams.receive_bytes(
            (p.data for p in request_iterator), first.info, limits.MAX_JOB_ARCHIVE_BYTES, "job archive"
        )
        return self._info(self._jobs.submit(data, who))

    @rpc_boundary
    def ListJobs(self, request: fedsec_pb2.ListJobsRequest, context: grpc.ServicerContext) -> fedsec_pb2.JobList:
        require(context, Kind.ADMIN)
        limit = min(request.max_results or limits.MAX_LIST_JOBS, limits.MAX_LIST_JOBS)
        records = self._store.list(name_prefix=request.name_prefix, id_prefix=request.id_prefix, limit=limit)
        return fedsec_pb2.JobList(jobs=[self._info(r) for r in records])

    @rpc_boundary
    def GetJobMeta(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> fedsec_pb2.JobInfo:
        require(context, Kind.ADMIN)
        return self._info(self._store.find(request.job_id))

    @rpc_boundary
    def AbortJob(self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext) -> fedsec_pb2.JobInfo:
        who = require(context, Kind.ADMIN)
        record = self._store.find(request.job_id)
        return self._info(self._jobs.abort(record.job_id, who))

    @rpc_boundary
    def DownloadJob(
        self, request: fedsec_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[fedsec_pb2.ArchivePart]:
        require(context, Kind.ADMIN)
        record = self._store.find(request.job_id)
        data = self._jobs.result_archive(record.job_id)
        yield fedsec_pb2.ArchivePart(info=streams.describe_bytes(data))
        for chunk in streams.bytes_chunks(data):
            yield fedsec_pb2.ArchivePart(data=chunk)
