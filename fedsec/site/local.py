"""The site's local endpoints for its training scripts: one Unix-socket gRPC server per job.

Each started job gets its own socket (the only one bound into its sandbox)
and a fresh random token; every call must carry that token, and acts only on
that token's job: the job id comes from the endpoint, never from the request.
The relay passes GetTask, SubmitResult and SendEvents on to the server.
It takes a task whole from the server before the script sees any of it, and
keeps the script's upload in a file outside the job's work folder before it
sends it on; both are retried on transient errors (fedsec.site.transfer) until
the signed job's round_timeout has passed, so a reset link costs a retry, not
the round. A task request names the models the site holds (the initial model
of the signed, verified job archive, the last model received); a task whose
model is one of them comes without its bytes, and the site's own copy is used
once its size and SHA-256 match the task's (else it is downloaded).

How a task's model reaches the script and how the script's result goes up is
the job's site codec (fedsec.site.codec), picked once when the endpoint opens
from the signed job's he section: plain (as sent; the upload kept whole, then
sent), or encrypted (the site's HE key stays in this trusted process: the global
model is decrypted before the script sees it, and the script's plain update is
encrypted with the signed job's HE parameters as it streams up). The script
calls the same Client API either way. The signed job, not the server's task
message, decides HE and the strategy: a task whose meta disagrees with it is
never handed to the script, nor to the codec.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from fedsec import _fs, limits
from fedsec.errors import AuthError, FedsecError, TransferInterruptedError, WireError
from fedsec.site.codec import EncryptedCodec, Parts, PlainCodec, SiteCodec, parse_meta
from fedsec.site.spool import EventSpool
from fedsec.site.transfer import retry
from fedsec.tracking.events import check_batch
from fedsec.transport.local import TOKEN_METADATA, serve_unix
from fedsec.transport.tls import rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

if TYPE_CHECKING:  # the job folder format only once a job needs it (_fedavg): an idle site never loads it
    from fedsec.jobs.meta import HEConfig, StrategyConfig

log = logging.getLogger(__name__)

_MAX_WAIT = 30.0

Upstream = Callable[[], fedsec_pb2_grpc.FederationStub]


def _fedavg() -> StrategyConfig:
    """The strategy of a job that names none; fedsec.jobs.meta is loaded with the first job, not at the site's start."""
    from fedsec.jobs.meta import StrategyConfig

    return StrategyConfig()


def he_meta(he: HEConfig) -> dict[str, Any] | None:
    """The he entry a task for a job with this signed HE config must carry (None: HE off)."""
    if not he.enabled:
        return None
    return {"clip": he.clip, "max_examples": he.max_examples, "max_clients": he.max_clients}


def task_disagreement(meta: dict[str, Any], he: HEConfig, strategy: StrategyConfig | None = None) -> str:
    """Why a task's meta disagrees with the signed job's HE settings or strategy; "" when it agrees.

    A task that names no strategy is a fedavg task.
    """
    expected = he_meta(he)
    got = meta.get("he")
    if got != expected:
        return f"he {json.dumps(got, sort_keys=True)} but the signed job says {json.dumps(expected, sort_keys=True)}"
    encrypted = meta.get("encrypted", False)
    if not isinstance(encrypted, bool) or (encrypted and not he.enabled):
        return f"encrypted={encrypted!r} but the signed job does not use HE"
    signed = (strategy or _fedavg()).task_meta()
    got_strategy = meta.get("strategy", {"name": "fedavg"})
    if got_strategy != signed:
        return (
            f"strategy {json.dumps(got_strategy, sort_keys=True)} but the signed job says "
            f"{json.dumps(signed, sort_keys=True)}"
        )
    return ""


@dataclass
class JobEndpoint:
    """One job's local endpoint: its socket, its token and what the relay keeps for it."""

    job_id: str
    socket: Path
    token: str = field(repr=False)
    he: HEConfig
    work: Path
    transfer_seconds: float = 600.0  # how long a task download or an upload is retried (the job's round_timeout)
    server: grpc.Server | None = None
    strategy: StrategyConfig = field(default_factory=_fedavg)  # the signed job's: a task must say the same
    refused_round: int = -1  # the last round whose task was refused (logged once)
    initial_model: Path | None = None  # the initial model in the signed, verified job archive's unpacked folder
    held: dict[bytes, Path] = field(default_factory=dict, repr=False)  # SHA-256 -> a model file this site holds
    last_held: bytes = b""  # the digest of the last model received (kept in a file beside work/)
    sites: int = 0  # how many sites the signed job lists (scaffold's N)


@dataclass(frozen=True)
class SiteLink:
    """What every job's relay on a site shares: the site's name, its server, its spool and its HE key."""

    site: str
    upstream: Upstream
    spool: EventSpool
    wake: Callable[[], None]  # tells the forwarder that events were spooled
    he_context: Callable[[], Any]


class LocalEndpoints:
    """Opens and closes the per-job endpoints of one site."""

    def __init__(
        self,
        socket_dir: Path,
        site: str,
        upstream: Upstream,
        spool: EventSpool,
        wake: Callable[[], None],
        he_context: Callable[[], Any],
    ) -> None:
        self._dir = socket_dir
        self._link = SiteLink(site, upstream, spool, wake, he_context)
        self._lock = threading.Lock()
        self._open: dict[str, JobEndpoint] = {}
        self._seq = 0

    def open(
        self,
        job_id: str,
        he: HEConfig,
        work: Path,
        transfer_seconds: float = 600.0,
        initial_model: Path | None = None,
        socket: Path | None = None,
        strategy: StrategyConfig | None = None,
        sites: int = 0,
    ) -> JobEndpoint:
        """Start job_id's endpoint on a fresh socket with a fresh token; the socket exists on return.

        transfer_seconds: how long the relay retries a task download or an upload through a bad link.
        initial_model: the initial model of the signed job archive as unpacked here; a task whose model
        has its SHA-256 is not downloaded again.
        socket: where to make it (a warm job process's own socket folder); a fresh name in this site's folder if None.
        strategy: the signed job's strategy section (None: fedavg); a task that says otherwise is refused.
        sites: how many sites the signed job lists.
        """
        self.close(job_id)
        with self._lock:
            self._seq += 1
            socket = self._dir / f"{self._seq}.sock" if socket is None else socket
        socket.unlink(missing_ok=True)
        token = secrets.token_urlsafe(limits.JOB_TOKEN_BYTES)
        endpoint = JobEndpoint(
            job_id,
            socket,
            token,
            he,
            work,
            transfer_seconds,
            initial_model=initial_model,
            strategy=strategy or _fedavg(),
            sites=sites,
        )
        relay = JobRelay(endpoint, self._link, job_codec(endpoint, self._link))
        endpoint.server = serve_unix(socket, lambda s: fedsec_pb2_grpc.add_FederationServicer_to_server(relay, s), 4)
        with self._lock:
            self._open[job_id] = endpoint
        return endpoint

    def close(self, job_id: str) -> None:
        with self._lock:
            endpoint = self._open.pop(job_id, None)
        if endpoint is not None and endpoint.server is not None:
            endpoint.server.stop(grace=0.5)
            endpoint.socket.unlink(missing_ok=True)

    def close_all(self) -> None:
        with self._lock:
            jobs = list(self._open)
        for job_id in jobs:
            self.close(job_id)


def job_codec(endpoint: JobEndpoint, link: SiteLink) -> SiteCodec:
    """The codec of endpoint's job, from its signed he section: encrypted (with the site's HE key) or plain."""
    if endpoint.he.enabled:
        return EncryptedCodec(
            endpoint.job_id,
            link.site,
            endpoint.he,
            endpoint.strategy,
            endpoint.sites,
            endpoint.work,
            link.he_context,
        )
    return PlainCodec(endpoint.job_id, endpoint.work)


class JobRelay(fedsec_pb2_grpc.FederationServicer):
    """Serves one job's script: checks its token, relays to the server through the job's codec."""

    def __init__(self, endpoint: JobEndpoint, link: SiteLink, codec: SiteCodec) -> None:
        self._job = endpoint
        self._upstream = link.upstream
        self._spool = link.spool
        self._wake = link.wake
        self._codec = codec

    def _check(self, named_job: str, context: grpc.ServicerContext) -> str:
        """The endpoint's job id, once the caller's token matches it and it names no other job."""
        tokens = [v for k, v in context.invocation_metadata() if k == TOKEN_METADATA]
        token = tokens[0] if len(tokens) == 1 and isinstance(tokens[0], str) else ""
        if not hmac.compare_digest(token.encode(), self._job.token.encode()):
            raise AuthError(f"a local call for job {self._job.job_id} without its credential")
        if named_job and named_job != self._job.job_id:
            raise AuthError(f"the credential of job {self._job.job_id} does not cover job {named_job[:64]!r}")
        return self._job.job_id

    @rpc_boundary
    def GetTask(self, request: fedsec_pb2.TaskRequest, context: grpc.ServicerContext) -> Iterator[fedsec_pb2.TaskPart]:
        job_id = self._check(request.job_id, context)
        wait = min(max(request.wait_seconds, 0.0), _MAX_WAIT)
        upstream = fedsec_pb2.TaskRequest(job_id=job_id, wait_seconds=wait)
        return self._task(upstream, wait, context)

    def _task(
        self, request: fedsec_pb2.TaskRequest, wait: float, context: grpc.ServicerContext
    ) -> Iterator[fedsec_pb2.TaskPart]:
        deadline = time.monotonic() + self._job.transfer_seconds
        what = f"task of job {self._job.job_id}"
        try:
            first, payload = retry(lambda: self._task_once(request, wait, deadline), what, deadline, context.is_active)
        except FedsecError as exc:
            if not isinstance(exc.__cause__, grpc.RpcError):
                raise
            _forward_error(exc.__cause__, context)  # past the job's deadline: the script sees the server's status
            return
        header = first.header
        if header.status != fedsec_pb2.TASK_STATUS_TASK:
            yield first
            return
        meta = parse_meta(header.meta_json, what)
        problem = task_disagreement(meta, self._job.he, self._job.strategy)
        if problem:
            yield from self._refuse(header.current_round, problem, wait, context)
            return
        header, model = self._codec.task(header, meta, payload)
        yield fedsec_pb2.TaskPart(header=header)
        for chunk in streams.bytes_chunks(model):
            yield fedsec_pb2.TaskPart(data=chunk)

    def _task_once(
        self, request: fedsec_pb2.TaskRequest, wait: float, deadline: float
    ) -> tuple[fedsec_pb2.TaskPart, bytes]:
        """One try at the server's answer: its first part and, for a task, the whole payload.

        The request names the models this site holds; a task whose model is one of them comes
        without its bytes, and the site's own copy is used once its size and SHA-256 match.
        """
        held = self._held_models()
        asked = fedsec_pb2.TaskRequest()
        asked.CopyFrom(request)
        asked.held_sha256[:] = sorted(held)
        parts = self._upstream().GetTask(asked, timeout=wait + max(deadline - time.monotonic(), 1.0))
        try:
            first = next(parts, None)
            if first is None or first.WhichOneof("part") != "header":
                raise WireError(f"job {self._job.job_id}: the server's task did not start with a header")
            header = first.header
            if header.status != fedsec_pb2.TASK_STATUS_TASK:
                return first, b""
            where = f"task of job {self._job.job_id} round {header.current_round}"
            if header.model_held:
                payload = self._held_payload(header.payload, held, where)
            else:
                payload = streams.receive_bytes(_data(parts, "task"), header.payload, limits.MAX_MODEL_BYTES, where)
        finally:
            parts.cancel()
        log.info(
            "job=%s round=%d %s task model_bytes=%d downloaded=%d",
            self._job.job_id,
            header.current_round,
            header.task,
            len(payload),
            0 if header.model_held else len(payload),
        )
        if not header.model_held:
            self._hold(bytes(header.payload.sha256), payload)
        header.model_held = False  # what the script is handed carries the model's bytes
        return first, payload

    def _held_models(self) -> dict[bytes, Path]:
        """SHA-256 -> file of the models this site holds for the job: its initial model, the last one received."""
        job = self._job
        if job.initial_model is not None:
            try:
                digest = bytes(streams.describe_file(job.initial_model).sha256)
            except OSError as exc:
                log.warning("job=%s cannot read its initial model: %s", job.job_id, exc.strerror or exc)
            else:
                job.held[digest] = job.initial_model
            job.initial_model = None  # hashed once: a later change is caught when the copy is used
        return dict(job.held)

    def _held_payload(self, info: fedsec_pb2.PayloadInfo, held: dict[bytes, Path], where: str) -> bytes:
        """This site's own copy of the model info names; TransferInterruptedError (a retry) when it changed."""
        digest = bytes(info.sha256)
        path = held.get(digest)
        if path is None:
            raise WireError(f"{where}: the server sent no model, naming one this site does not hold")
        data = _fs.read_bounded(path, limits.MAX_MODEL_BYTES, f"{where}: the site's copy", WireError)
        if len(data) != info.total_size or not hmac.compare_digest(hashlib.sha256(data).digest(), digest):
            self._job.held.pop(digest, None)  # the next try downloads it
            log.warning("job=%s its copy of the model changed since it was received: downloading it", self._job.job_id)
            raise TransferInterruptedError(f"{where}: the site's copy of the model changed")
        return data

    def _hold(self, digest: bytes, payload: bytes) -> None:
        """Keep the model just received (beside work/, not in it) as the job's last held model; checked on use."""
        job = self._job
        path = job.work.parent / ".last-model"
        job.held.pop(job.last_held, None)
        job.last_held = b""
        try:
            _fs.write_atomic(path, payload, mode=0o600, durable=False)  # a cache: its digest is checked on use
        except OSError as exc:
            log.warning("job=%s cannot keep the model received: %s", job.job_id, exc.strerror or exc)
            return
        if digest not in job.held:
            job.held[digest] = path
            job.last_held = digest

    def _refuse(
        self, current_round: int, problem: str, wait: float, context: grpc.ServicerContext
    ) -> Iterator[fedsec_pb2.TaskPart]:
        if self._job.refused_round != current_round:
            self._job.refused_round = current_round
            log.error(
                "job=%s refused a task that disagrees with the signed job: round %d: %s",
                self._job.job_id,
                current_round,
                problem,
            )
        done = threading.Event()
        context.add_callback(done.set)
        done.wait(wait)  # the script asked to wait this long: it asks again, and the round goes on without us
        yield fedsec_pb2.TaskPart(header=fedsec_pb2.TaskHeader(status=fedsec_pb2.TASK_STATUS_WAIT))

    @rpc_boundary
    def SendEvents(self, request: fedsec_pb2.EventBatch, context: grpc.ServicerContext) -> fedsec_pb2.EventAck:
        """Store the events durably, then answer: the forwarder sends them on to the server."""
        job_id = self._check(request.job_id, context)
        events = check_batch(request, f"events of job {job_id}")
        self._spool.append(job_id, events)
        self._wake()
        return fedsec_pb2.EventAck(stored=len(events))

    @rpc_boundary
    def SubmitResult(
        self, request_iterator: Iterator[fedsec_pb2.ResultPart], context: grpc.ServicerContext
    ) -> fedsec_pb2.ResultReply:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise WireError("result stream did not start with a header")
        header = fedsec_pb2.ResultHeader()
        header.CopyFrom(first.header)
        header.job_id = self._check(header.job_id, context)
        where = f"result of job {self._job.job_id} round {header.current_round}"
        data = _data(request_iterator, "result")
        return self._codec.submit(header, data, where, lambda parts: self._send(parts, where, context))

    def _send(self, parts: Parts, where: str, context: grpc.ServicerContext) -> fedsec_pb2.ResultReply:
        """Send a result (parts() makes each try's stream), again after each transient failure, until the deadline."""
        deadline = time.monotonic() + self._job.transfer_seconds

        def attempt() -> fedsec_pb2.ResultReply:
            reply: fedsec_pb2.ResultReply = self._upstream().SubmitResult(
                parts(), timeout=max(deadline - time.monotonic(), 1.0)
            )
            return reply

        try:
            reply = retry(attempt, f"upload of the {where}", deadline, context.is_active)
            if not reply.accepted:  # the site's operator sees why too, not only the script
                log.warning("job=%s the server refused the %s: %s", self._job.job_id, where, reply.reason)
            return reply
        except FedsecError as exc:
            if not isinstance(exc.__cause__, grpc.RpcError):
                raise
            _forward_error(exc.__cause__, context)
            return fedsec_pb2.ResultReply(accepted=False, reason="server unreachable")


def _data(parts: Iterator[Any], what: str) -> Iterator[bytes]:
    for part in parts:
        if part.WhichOneof("part") != "data":
            raise WireError(f"{what} stream: a second header")
        yield part.data


def _forward_error(exc: grpc.RpcError, context: grpc.ServicerContext) -> None:
    # set the status rather than abort(): abort raises, which a relay generator must not do
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
    detail = exc.details() if isinstance(exc, grpc.Call) else "server unreachable"
    context.set_code(code)
    context.set_details(detail or "server unreachable")
