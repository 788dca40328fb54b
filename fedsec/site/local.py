"""The site's local endpoint for its training scripts: a Unix-socket gRPC server.

It serves the Federation service's GetTask and SubmitResult to the scripts
of the jobs this site runs and relays each call to the server, streaming
chunks through without holding a whole model twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from fedsec.errors import AuthError
from fedsec.site.spool import EventSpool
from fedsec.tracking.events import check_batch
from fedsec.transport.tls import rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc

log = logging.getLogger(__name__)


class ScriptRelay(fedsec_pb2_grpc.FederationServicer):
    """Relays the training scripts' task calls to the server, and spools their tracking events."""

    def __init__(
        self,
        upstream: Callable[[], fedsec_pb2_grpc.FederationStub],
        jobs: Callable[[], set[str]],
        spool: EventSpool,
        wake: Callable[[], None],
    ) -> None:
        self._upstream = upstream
        self._jobs = jobs
        self._spool = spool
        self._wake = wake

    def _check(self, job_id: str) -> None:
        if job_id not in self._jobs():
            raise AuthError(f"job {job_id!r} does not run on this site")

    @rpc_boundary
    def GetTask(self, request: fedsec_pb2.TaskRequest, context: grpc.ServicerContext) -> Iterator[fedsec_pb2.TaskPart]:
        self._check(request.job_id)
        wait = min(max(request.wait_seconds, 0.0), 30.0)
        upstream = fedsec_pb2.TaskRequest(job_id=request.job_id, wait_seconds=wait)
        return _relay_stream(lambda: self._upstream().GetTask(upstream, timeout=wait + 60), context)

    @rpc_boundary
    def SendEvents(self, request: fedsec_pb2.EventBatch, context: grpc.ServicerContext) -> fedsec_pb2.EventAck:
        """Store the events durably, then answer: the forwarder sends them on to the server."""
        self._check(request.job_id)
        events = check_batch(request, f"events of job {request.job_id}")
        self._spool.append(request.job_id, events)
        self._wake()
        return fedsec_pb2.EventAck(stored=len(events))

    @rpc_boundary
    def SubmitResult(
        self, request_iterator: Iterator[fedsec_pb2.ResultPart], context: grpc.ServicerContext
    ) -> fedsec_pb2.ResultReply:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise AuthError("result stream did not start with a header")
        self._check(first.header.job_id)

        def parts() -> Iterator[fedsec_pb2.ResultPart]:
            yield first
            yield from request_iterator

        try:
            reply: fedsec_pb2.ResultReply = self._upstream().SubmitResult(parts(), timeout=600)
        except grpc.RpcError as exc:
            _forward_error(exc, context)
            return fedsec_pb2.ResultReply(accepted=False, reason="server unreachable")
        return reply


def _relay_stream(
    call: Callable[[], Iterator[fedsec_pb2.TaskPart]], context: grpc.ServicerContext
) -> Iterator[fedsec_pb2.TaskPart]:
    try:
        yield from call()
    except grpc.RpcError as exc:
        _forward_error(exc, context)


def _forward_error(exc: grpc.RpcError, context: grpc.ServicerContext) -> None:
    # set the status rather than abort(): abort raises, which a relay generator must not do
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
    detail = exc.details() if isinstance(exc, grpc.Call) else "server unreachable"
    context.set_code(code)
    context.set_details(detail or "server unreachable")
