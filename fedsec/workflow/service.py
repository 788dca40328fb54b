"""The Workflow gRPC service of a server job process, on a Unix socket the server parent relays to.

Besides the sites' calls it relays, the parent reaches the job's state here, and
only here (fedsec.workflow.link): StartState hands the job process the state to
run from, PullState takes its reports, and UpdateSites carries, with the sites
alive, the participation record when it changed (a site's script failed, a site
left the job) and the sites that reported their script's end.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import grpc

from fedsec import limits
from fedsec.errors import TransferInterruptedError, WireError
from fedsec.state import records
from fedsec.tracking.events import check_batch
from fedsec.transport.tls import rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams
from fedsec.wire.job_state import participation_from_wire
from fedsec.workflow.fedavg import FedAvg, Participation
from fedsec.workflow.link import JobState, JobStateLink

log = logging.getLogger(__name__)


class TrackingQuota:
    """How many bytes of tracking events each site, and the job as a whole, may write; says so once when reached.

    A site past its share, or any site once the job's total is reached, has its later events acknowledged
    and dropped (the site's spool lets them go), with one WARNING line in the job's log per site.
    """

    def __init__(self, per_site: int, per_job: int) -> None:
        self._per_site, self._per_job = per_site, per_job
        self._used: dict[str, int] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def allows(self, site: str) -> bool:
        with self._lock:
            used, total = self._used.get(site, 0), sum(self._used.values())
            if used < self._per_site and total < self._per_job:
                return True
            if site not in self._warned:
                self._warned.add(site)
                if used >= self._per_site:
                    why = f"{site} wrote {used >> 20} MiB of tracking events, its quota for one job"
                else:
                    why = f"the sites wrote {total >> 20} MiB of tracking events, the quota of one job"
                log.warning("tracking quota reached: %s; later events of %s are dropped", why, site)
            return False

    def add(self, site: str, size: int) -> None:
        with self._lock:
            self._used[site] = self._used.get(site, 0) + size


class WorkflowService(fedsec_pb2_grpc.WorkflowServicer):
    def __init__(self, fedavg: FedAvg, num_rounds: int) -> None:
        self._fedavg = fedavg
        self._num_rounds = num_rounds
        self._quota = TrackingQuota(limits.TRACKING_QUOTA_SITE_BYTES, limits.TRACKING_QUOTA_JOB_BYTES)
        self._he = fedavg.codec.task_he

    @rpc_boundary
    def GetTask(self, request: fedsec_pb2.TaskRequest, context: grpc.ServicerContext) -> Iterator[fedsec_pb2.TaskPart]:
        held = streams.held_digests(request.held_sha256, f"task request of {request.site}")
        task = self._fedavg.get_task(request.site, request.wait_seconds)
        if task.model is None or task.payload is None:
            yield fedsec_pb2.TaskPart(header=fedsec_pb2.TaskHeader(status=task.status))
            return
        model_held = task.payload.sha256 in held
        header = fedsec_pb2.TaskHeader(
            status=task.status,
            task=task.kind,
            current_round=task.current_round,
            num_rounds=self._num_rounds,
            meta_json=json.dumps(
                {
                    "job": self._fedavg.meta.name,
                    "he": self._he,
                    "encrypted": task.encrypted,
                    "strategy": self._fedavg.strategy.task_meta(),
                }
            ),
            payload=task.payload,
            model_held=model_held,
        )
        # the transfer accounting of the job's models: what each site was sent, per round
        what = f"job={self._fedavg.job_id} round={task.current_round} site={request.site} {task.kind} task"
        size = task.payload.total_size
        if model_held:  # logged first: the site may cancel the stream as soon as it has the header
            log.info("%s model_bytes=%d sent=0 (the site holds it)", what, size)
            yield fedsec_pb2.TaskPart(header=header)
            return
        yield fedsec_pb2.TaskPart(header=header)
        sent = 0
        try:
            for chunk in streams.file_chunks(task.model):
                sent += len(chunk)  # counted as handed to gRPC: the site may cancel once it has the last one
                yield fedsec_pb2.TaskPart(data=chunk)
        finally:
            log.info("%s model_bytes=%d sent=%d%s", what, size, sent, "" if sent == size else " (cut short)")

    @rpc_boundary
    def SubmitResult(
        self, request_iterator: Iterator[fedsec_pb2.ResultPart], context: grpc.ServicerContext
    ) -> fedsec_pb2.ResultReply:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise WireError("result stream did not start with a header")
        accepted, reason = self._fedavg.submit(first.header.site, first.header, _data(request_iterator))
        return fedsec_pb2.ResultReply(accepted=accepted, reason=reason)

    @rpc_boundary
    def SendEvents(self, request: fedsec_pb2.EventBatch, context: grpc.ServicerContext) -> fedsec_pb2.EventAck:
        events = check_batch(request, f"events of {request.site}")
        tracker = self._fedavg.tracker
        if tracker is None:
            return fedsec_pb2.EventAck(duplicates=len(events))  # tracking is off: taken and dropped
        if not self._quota.allows(request.site):  # acknowledged, so the site lets them go, and not written
            return fedsec_pb2.EventAck(duplicates=len(events))
        stored, duplicates = tracker.site_events(request.site, events)
        self._quota.add(request.site, request.ByteSize() * stored // max(1, len(events)))
        return fedsec_pb2.EventAck(stored=stored, duplicates=duplicates)

    @rpc_boundary
    def UpdateSites(self, request: fedsec_pb2.SiteList, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        if request.HasField("participation"):
            record = participation_from_wire(request.participation, "participation from the server")
            self._fedavg.apply_participation(_participation(record))
        self._fedavg.link.sites_reported(request.reported)
        self._fedavg.update_sites(request.sites)
        return fedsec_pb2.Empty()

    @rpc_boundary
    def StartState(self, request: fedsec_pb2.JobStart, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        state = JobState.from_wire(request)
        self._fedavg.apply_participation(_participation(state.participation))  # the sites that left stay out
        self._fedavg.link.start(state)
        return fedsec_pb2.Empty()

    @rpc_boundary
    def PullState(self, request: fedsec_pb2.StatePull, context: grpc.ServicerContext) -> fedsec_pb2.StateReports:
        reports = self._fedavg.link.pull(request.acked, request.wait_seconds)
        return fedsec_pb2.StateReports(reports=reports)


class LinkService(fedsec_pb2_grpc.WorkflowServicer):
    """What a job process that could not set up its job serves: its link only, so its outcome (why it could
    not start) reaches the parent. The sites' calls get UNIMPLEMENTED, which the parent's relays handle."""

    def __init__(self, link: JobStateLink) -> None:
        self._link = link

    @rpc_boundary
    def UpdateSites(self, request: fedsec_pb2.SiteList, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        self._link.sites_reported(request.reported)
        return fedsec_pb2.Empty()

    @rpc_boundary
    def StartState(self, request: fedsec_pb2.JobStart, context: grpc.ServicerContext) -> fedsec_pb2.Empty:
        self._link.start(JobState.from_wire(request))
        return fedsec_pb2.Empty()

    @rpc_boundary
    def PullState(self, request: fedsec_pb2.StatePull, context: grpc.ServicerContext) -> fedsec_pb2.StateReports:
        return fedsec_pb2.StateReports(reports=self._link.pull(request.acked, request.wait_seconds))


def _participation(record: records.Participation) -> Participation:
    """The parent's participation record as the driver takes it in."""
    return Participation(dict(record.failures), dict(record.left), record.fetched)


def _data(parts: Iterator[fedsec_pb2.ResultPart]) -> Iterator[bytes | fedsec_pb2.PayloadInfo]:
    """The data chunks of a result stream, then its trailer if it has one (a PayloadInfo).

    TransferInterruptedError when the stream is cancelled or reset.
    """
    while True:
        try:
            part = next(parts, None)
        except grpc.RpcError as exc:  # the sender (or the relay before it) went away mid-stream
            raise TransferInterruptedError("result stream: cancelled before its end") from exc
        if part is None:
            return
        kind = part.WhichOneof("part")
        if kind == "header":
            raise WireError("result stream: a second header")
        yield part.data if kind == "data" else part.trailer
