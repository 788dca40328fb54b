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

The site's HE secret key stays here, in trusted code: in a job whose signed
config enables HE, the relay decrypts the global model before the script
sees it (keeping the final one in the job's work folder), and encrypts the
script's plain update with the signed job's HE parameters before it leaves
the site, sending each ciphertext as it is made (fedsec.site.upload). In a
fedopt job it also runs the server optimizer's step the server cannot run
(fedsec.site.fedopt_he): the script gets the stepped model, and the upload
starts with the sealed new model and state and their digest. The signed job,
not the server's task message, decides HE and the strategy: a task whose meta
disagrees with it is never handed to the script.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from fedsec import _fs, limits
from fedsec.errors import AuthError, FedsecError, TransferInterruptedError, WireError
from fedsec.site.spool import EventSpool
from fedsec.site.transfer import retry
from fedsec.site.upload import StreamedUpload
from fedsec.tracking.events import check_batch
from fedsec.transport.local import TOKEN_METADATA, serve_unix
from fedsec.transport.tls import rpc_boundary
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

if TYPE_CHECKING:  # numpy (and arrays, which needs it) only once a job needs them: an idle site never loads it
    import numpy as np

    from fedsec.jobs.meta import HEConfig, StrategyConfig  # likewise the job folder format (_fedavg)

log = logging.getLogger(__name__)

FINAL_MODEL = "global_model.fsa"  # the decrypted final model of an HE job, in the job's work folder
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
    global_params: dict[str, np.ndarray] | None = field(default=None, repr=False)  # HE jobs: the last global model
    strategy: StrategyConfig = field(default_factory=_fedavg)  # the signed job's: a task must say the same
    refused_round: int = -1  # the last round whose task was refused (logged once)
    initial_model: Path | None = None  # the initial model in the signed, verified job archive's unpacked folder
    held: dict[bytes, Path] = field(default_factory=dict, repr=False)  # SHA-256 -> a model file this site holds
    last_held: bytes = b""  # the digest of the last model received (kept in a file beside work/)
    sites: int = 0  # how many sites the signed job lists (scaffold's N)
    control: dict[str, np.ndarray] | None = field(default=None, repr=False)  # HE scaffold: the last task's c
    fedopt_head: bytes = field(default=b"", repr=False)  # HE fedopt: the sealed step that heads the next upload


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
        relay = JobRelay(endpoint, self._link)
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


class JobRelay(fedsec_pb2_grpc.FederationServicer):
    """Serves one job's script: checks its token, relays to the server, does the HE work for it."""

    def __init__(self, endpoint: JobEndpoint, link: SiteLink) -> None:
        self._job = endpoint
        self._site = link.site
        self._upstream = link.upstream
        self._spool = link.spool
        self._wake = link.wake
        self._he_context = link.he_context

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
        meta = _meta(header.meta_json, what)
        problem = task_disagreement(meta, self._job.he, self._job.strategy)
        if problem:
            yield from self._refuse(header.current_round, problem, wait, context)
        elif self._job.he.enabled:
            yield from self._he_task(header, meta, payload)
        else:
            yield first
            for chunk in streams.bytes_chunks(payload):
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

    def _he_task(
        self, header: fedsec_pb2.TaskHeader, meta: dict[str, Any], payload: bytes
    ) -> Iterator[fedsec_pb2.TaskPart]:
        """Decrypt (or decode) the global model, keep it for DIFF updates, hand the script plain arrays.

        payload: the whole model, already checked against the size and SHA-256 its header announced.
        """
        from fedsec.jobs.meta import StrategyKind
        from fedsec.wire import arrays

        where = f"global model of job {self._job.job_id} round {header.current_round}"
        if self._job.strategy.name is StrategyKind.FEDOPT:  # the sites step the optimizer (fedsec.site.fedopt_he)
            from fedsec.site import fedopt_he

            stepped = fedopt_he.step(
                self._he_context(),
                self._job.job_id,
                self._job.strategy,
                header.current_round,
                payload,
                bool(meta.get("encrypted")),
                where,
            )
            params, self._job.fedopt_head = stepped.model, stepped.prefix
            log.info("job=%s round=%d fedopt step digest=%s", self._job.job_id, header.current_round, stepped.digest)
            if header.task == "evaluate":
                _keep_final(self._job, params)
        elif meta.get("encrypted"):
            from fedsec.he.codec import decrypt_model  # tenseal: only in HE jobs

            params, total = decrypt_model(self._he_context(), payload, where)
            params = self._scaffold_task(params, total, header.task, where)
            if header.task == "evaluate":  # the final model: this site keeps it, decrypted, in the job's folder
                _keep_final(self._job, params)
        else:
            params = self._scaffold_task(arrays.decode(payload, where), None, header.task, where)
        self._job.global_params = params
        plain = arrays.encode(self._scaffold_script_task(params, header.task), where)
        out = fedsec_pb2.TaskHeader()
        out.CopyFrom(header)
        out.meta_json = json.dumps({**meta, "encrypted": False})
        out.payload.CopyFrom(streams.describe_bytes(plain))
        yield fedsec_pb2.TaskPart(header=out)
        for chunk in streams.bytes_chunks(plain):
            yield fedsec_pb2.TaskPart(data=chunk)

    @property
    def _scaffold(self) -> bool:
        from fedsec.jobs.meta import StrategyKind

        return self._job.strategy.name is StrategyKind.SCAFFOLD

    def _scaffold_task(
        self, params: dict[str, np.ndarray], total: float | None, task: str, where: str
    ) -> dict[str, np.ndarray]:
        """The model of an HE scaffold task (its c kept for the upload: fedsec.site.scaffold); others as they are.

        total: the decrypted sum's total weight (None: a plain task, round 0's, whose c the server sent).
        """
        if not self._scaffold or (total is None and task != "train"):
            return params
        from fedsec.site import scaffold

        if total is None:
            model, self._job.control = scaffold.plain_task(params, where)
        else:
            model, self._job.control = scaffold.task_from_sum(params, total, self._job.sites, where)
        return model

    def _scaffold_script_task(self, params: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
        """What the script gets: a scaffold training task's model with c beside it (fedsec.jobs.control)."""
        if not self._scaffold or task != "train" or self._job.control is None:
            return params
        from fedsec.jobs import control

        return control.join(params, self._job.control)

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
        if self._job.he.enabled:
            return self._send_encrypted(header, _data(request_iterator, "result"), where, context)
        try:  # the whole upload first: a retry sends it again from here, never from the script
            kept = self._keep(header, _data(request_iterator, "result"), where)
        except WireError as exc:
            log.warning("job=%s result not sent: %s", self._job.job_id, exc)
            return fedsec_pb2.ResultReply(accepted=False, reason=str(exc))
        try:
            return self._send(lambda: _result_parts(header, streams.file_chunks(kept)), where, context)
        finally:
            kept.unlink(missing_ok=True)

    def _send_encrypted(
        self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes], where: str, context: grpc.ServicerContext
    ) -> fedsec_pb2.ResultReply:
        """Encrypt the script's update and send it as its ciphertexts are made (kept as they go, for a retry)."""
        try:
            header, pieces, bound = self._encrypt(header, data)
        except (WireError, ValueError) as exc:
            log.warning("job=%s result not sent: %s", self._job.job_id, exc)
            return fedsec_pb2.ResultReply(accepted=False, reason=str(exc))
        if pieces is None:  # no update: an evaluation's metrics
            return self._send(lambda: _result_parts(header, iter(())), where, context)
        with StreamedUpload(header, pieces, bound, self._job.work.parent) as upload:
            reply = self._send(upload.parts, where, context)
            if upload.error is not None:  # the encryption failed midway: that, not the cut stream, is the news
                raise upload.error
            return reply

    def _keep(self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes], where: str) -> Path:
        """The script's upload, checked against its announced size and digest, in a file beside (not in) work/."""
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".fsa", dir=self._job.work.parent)
        os.close(fd)
        kept = Path(name)
        try:
            with streams.PayloadWriter(kept, header.payload, limits.MAX_MODEL_BYTES, where) as writer:
                for chunk in data:
                    writer.write(chunk)
                writer.finish()
        except BaseException:
            kept.unlink(missing_ok=True)
            raise
        return kept

    def _send(
        self, parts: Callable[[], Iterator[fedsec_pb2.ResultPart]], where: str, context: grpc.ServicerContext
    ) -> fedsec_pb2.ResultReply:
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

    def _encrypt(
        self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes]
    ) -> tuple[fedsec_pb2.ResultHeader, Iterator[bytes] | None, int]:
        """The script's plain update -> the full weights, weighted and encrypted with the signed HE parameters.

        Returns the header to send, the encrypted update's pieces as they will be made (None: no
        update) and a bound of its size. The server sees neither the weights nor num_examples: the
        weight rides inside the ciphertexts, so the meta carries nothing but the params type.
        """
        from fedsec.jobs.meta import StrategyKind
        from fedsec.wire import arrays

        where = f"result of job {self._job.job_id} round {header.current_round}"
        payload = streams.receive_bytes(data, header.payload, limits.MAX_MODEL_BYTES, where)
        meta = _meta(header.meta_json, where)
        if self._job.strategy.name is StrategyKind.FEDOPT:
            return self._encrypt_fedopt(header, payload, meta, where)
        if not payload:
            header.meta_json = json.dumps({"encrypted": True})
            header.payload.CopyFrom(streams.describe_bytes(b""))
            return header, None, 0
        update = arrays.decode(payload, where)
        del payload
        delta: dict[str, np.ndarray] = {}
        if self._scaffold:
            from fedsec.jobs import control

            update, delta = control.split(update, control.CONTROL, where)
        params = _full_params(update, meta, self._job.global_params, where)
        if self._scaffold:
            params = self._scaffold_upload(params, delta, _weight(meta, self._job.he.max_examples, where), where)
        header.meta_json = json.dumps({"params_type": "full", "encrypted": True})
        return self._encrypt_params(header, params, meta, where)

    def _encrypt_params(
        self, header: fedsec_pb2.ResultHeader, params: dict[str, np.ndarray], meta: dict[str, Any], where: str
    ) -> tuple[fedsec_pb2.ResultHeader, Iterator[bytes], int]:
        """params weighted and encrypted with the signed HE parameters: (header, the pieces as made, a size bound)."""
        import numpy as np

        he = self._job.he
        weight = _weight(meta, he.max_examples, where)
        # stochastic rounding needs no secret randomness: seeding it by job, round and site makes runs repeatable
        seed_text = f"{self._job.job_id}:{header.current_round}:{self._site}".encode()
        seed = int.from_bytes(hashlib.sha256(seed_text).digest()[:8], "big")
        from fedsec.he.codec import ciphertexts_for, encrypt_chunks  # tenseal: only in HE jobs

        rng = np.random.default_rng(seed)
        pieces = encrypt_chunks(self._he_context(), params, weight, he.clip, rng, he.max_clients)
        records = ciphertexts_for(sum(int(v.size) for v in params.values()) + 1)
        bound = min(
            limits.MAX_MODEL_BYTES, limits.MAX_HE_HEADER_BYTES + 8 + records * (4 + limits.MAX_HE_CIPHERTEXT_BYTES)
        )
        return header, pieces, bound

    def _scaffold_upload(
        self, params: dict[str, np.ndarray], delta: dict[str, np.ndarray], weight: float, where: str
    ) -> dict[str, np.ndarray]:
        """The sections an HE scaffold upload encrypts (fedsec.site.scaffold.upload)."""
        from fedsec.he.params import quantised_weight
        from fedsec.site import scaffold

        job = self._job
        if job.control is None or job.global_params is None:
            raise WireError(f"{where}: a scaffold update, but no training task was received")
        server_lr = float(job.strategy.settings()["server_lr"])
        weight_q = quantised_weight(weight, job.he.clip, job.he.max_clients)
        return scaffold.upload(params, delta, job.global_params, job.control, server_lr, weight_q, job.he.clip, where)

    def _encrypt_fedopt(
        self, header: fedsec_pb2.ResultHeader, payload: bytes, meta: dict[str, Any], where: str
    ) -> tuple[fedsec_pb2.ResultHeader, Iterator[bytes] | None, int]:
        """_encrypt for fedopt: the sealed step of the task, then (training) the encrypted weight difference."""
        from fedsec.site.fedopt_he import update_difference
        from fedsec.wire import arrays

        head, self._job.fedopt_head = self._job.fedopt_head, b""
        if not head:
            raise WireError(f"{where}: no fedopt step to send: the task was not received through this site")
        header.meta_json = json.dumps({"params_type": "diff", "encrypted": True})
        if not payload:  # the final evaluation: the sealed final model and its digest alone
            return header, iter((head,)), len(head)
        diff = update_difference(arrays.decode(payload, where), meta, self._job.global_params, where)
        del payload
        _, pieces, bound = self._encrypt_params(header, diff, meta, where)
        return header, itertools.chain((head,), pieces), min(limits.MAX_MODEL_BYTES, bound + len(head))


def _keep_final(job: JobEndpoint, params: dict[str, np.ndarray]) -> None:
    """Keep the final global model, decrypted, in the job's work folder (HE jobs)."""
    from fedsec.wire import arrays

    try:
        arrays.write_file(job.work / FINAL_MODEL, params)
    except OSError as exc:
        log.warning("job=%s cannot keep the final model: %s", job.job_id, exc)


def _full_params(
    params: dict[str, np.ndarray], meta: dict[str, Any], base: dict[str, np.ndarray] | None, where: str
) -> dict[str, np.ndarray]:
    """params as full weights: a weight difference is added to the global model the script received."""
    params_type = meta.get("params_type", "full")
    if params_type == "full":
        return params
    if params_type != "diff":
        raise WireError(f"{where}: params_type must be full or diff, got {str(params_type)[:20]!r}")
    if base is None:
        raise WireError(f"{where}: a weight difference, but no global model was received")
    if set(params) != set(base) or any(params[k].shape != base[k].shape for k in base):
        raise WireError(f"{where}: the weight difference does not match the global model's tensors")
    return {k: (base[k] + params[k]).astype(base[k].dtype) for k in base}


def _weight(meta: dict[str, Any], max_examples: int, where: str) -> float:
    examples = meta.get("num_examples", max_examples)
    if isinstance(examples, bool) or not isinstance(examples, int | float) or not examples > 0:
        raise WireError(f"{where}: num_examples must be a positive number, got {str(examples)[:20]!r}")
    return min(float(examples), max_examples) / max_examples


def _meta(text: str, where: str) -> dict[str, Any]:
    from fedsec.wire import arrays

    if len(text) > limits.MAX_META_JSON_BYTES:
        raise WireError(f"{where}: meta larger than {limits.MAX_META_JSON_BYTES} bytes")
    try:
        value = arrays.strict_json(text) if text else {}
    except (ValueError, RecursionError) as exc:
        raise WireError(f"{where}: meta is not JSON") from exc
    if not isinstance(value, dict):
        raise WireError(f"{where}: meta is not a JSON object")
    return value


def _data(parts: Iterator[Any], what: str) -> Iterator[bytes]:
    for part in parts:
        if part.WhichOneof("part") != "data":
            raise WireError(f"{what} stream: a second header")
        yield part.data


def _result_parts(header: fedsec_pb2.ResultHeader, chunks: Iterator[bytes]) -> Iterator[fedsec_pb2.ResultPart]:
    yield fedsec_pb2.ResultPart(header=header)
    for chunk in chunks:
        yield fedsec_pb2.ResultPart(data=chunk)


def _forward_error(exc: grpc.RpcError, context: grpc.ServicerContext) -> None:
    # set the status rather than abort(): abort raises, which a relay generator must not do
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
    detail = exc.details() if isinstance(exc, grpc.Call) else "server unreachable"
    context.set_code(code)
    context.set_details(detail or "server unreachable")
