"""init / receive / send for a training script, over the site parent's Unix socket.

The parent relays each call to the server's workflow for this job; every
call carries the job's own credential (the token the site put in the
environment). The script never holds a key: in a job with homomorphic
encryption the site parent decrypts the global model before it arrives here
and encrypts the plain update sent from here. Calls retry with backoff while
the server or the link is down (a server restart mid-job is survived), up to
RETRY_SECONDS; what counts as transient is fedsec.transport.tls.transient. Nothing here imports torch.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedsec import _schema, limits
from fedsec.errors import FedsecError, JobError, WireError
from fedsec.jobs.env import ENV_DATASETS, ENV_JOB_ID, ENV_JOB_TOKEN, ENV_SITE, ENV_SOCKET
from fedsec.tracking.events import Event, to_proto
from fedsec.transport.local import TOKEN_METADATA, nobody_listens, unix_channel
from fedsec.transport.tls import transient
from fedsec.wire import arrays, fedsec_pb2, fedsec_pb2_grpc, streams

log = logging.getLogger(__name__)

RETRY_SECONDS = 600.0
_POLL_SECONDS = 10.0


class ParamsType(enum.Enum):
    FULL = "full"  # the model's weights
    DIFF = "diff"  # the change to the received global weights


@dataclass
class FLModel:
    """What a script receives from and sends to the federation."""

    params: dict[str, np.ndarray] | None = None
    params_type: ParamsType = ParamsType.FULL
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    current_round: int = 0
    total_rounds: int = 0
    task: str = "train"


@dataclass
class _Link:
    stub: fedsec_pb2_grpc.FederationStub
    channel: grpc.Channel
    job_id: str
    site: str
    token: str = field(repr=False)
    socket: Path
    running: bool = True
    last: FLModel | None = None
    strategy: dict[str, Any] = field(default_factory=dict)  # what the last task said of the job's strategy

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA, self.token),)


_link: _Link | None = None


def init() -> None:
    """Connect to this site's parent; call once at the start of the script.

    Raises JobError when the script was not started by a fedsec site.
    """
    global _link  # noqa: PLW0603 - one link per training process, as the API promises
    if _link is not None:
        return
    missing = [k for k in (ENV_SOCKET, ENV_JOB_ID, ENV_SITE, ENV_JOB_TOKEN) if not os.environ.get(k)]
    if missing:
        raise JobError(f"not started by a fedsec site: {', '.join(missing)} not set")
    path = Path(os.environ[ENV_SOCKET])
    channel = unix_channel(path)
    stub = fedsec_pb2_grpc.FederationStub(channel)
    _link = _Link(stub, channel, os.environ[ENV_JOB_ID], os.environ[ENV_SITE], os.environ[ENV_JOB_TOKEN], path)


def _get() -> _Link:
    if _link is None:
        raise JobError("call fedsec.client.init() first")
    return _link


def site_name() -> str:
    return _get().site


def job_id() -> str:
    return _get().job_id


def is_running() -> bool:
    """False once the job has ended for this site."""
    return _get().running


def receive(timeout: float | None = None) -> FLModel | None:
    """The next task from the server: the global model and the round; None when the job is done.

    Waits until the server has a task for this site (or timeout seconds).
    Raises WireError for a corrupt payload, FedsecError when the site is unreachable.
    """
    link = _get()
    deadline = None if timeout is None else time.monotonic() + timeout
    while link.running:
        request = fedsec_pb2.TaskRequest(job_id=link.job_id, wait_seconds=_POLL_SECONDS)
        model: FLModel | None = _retry(lambda req=request: _fetch(link, req), "receive")
        if model is not None:
            link.last = model
            link.strategy = _strategy_meta(model.meta)
            return model
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"no task within {timeout} s")
    return None


def _fetch(link: _Link, request: fedsec_pb2.TaskRequest) -> FLModel | None:
    parts = link.stub.GetTask(request, timeout=_POLL_SECONDS + 60, metadata=link.metadata)
    first = next(parts, None)
    if first is None or first.WhichOneof("part") != "header":
        raise WireError("task stream did not start with a header")
    header = first.header
    if header.status == fedsec_pb2.TASK_STATUS_DONE:
        link.running = False
        return None
    if header.status == fedsec_pb2.TASK_STATUS_WAIT:
        return None
    payload = streams.receive_bytes(_data(parts), header.payload, limits.MAX_MODEL_BYTES, "global model")
    meta = _meta(header.meta_json)
    params = arrays.decode(payload, "global model")  # always plain: the site decrypts an encrypted one
    return FLModel(
        params=params,
        params_type=ParamsType.FULL,
        meta=meta,
        current_round=header.current_round,
        total_rounds=header.num_rounds,
        task=header.task,
    )


def _data(parts: Iterator[fedsec_pb2.TaskPart]) -> Iterator[bytes]:
    for part in parts:
        if part.WhichOneof("part") != "data":
            raise WireError("task stream: a second header")
        yield part.data


def _meta(text: str) -> dict[str, Any]:
    if not text:
        return {}
    value = _schema.parse_json(text, "meta_json", limit=limits.MAX_META_JSON_BYTES, error=WireError)
    if not isinstance(value, dict):
        raise WireError("meta_json is not an object")
    return value


def _strategy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The strategy part of a task's meta: a JSON object naming the strategy ({"name": "fedavg"} when absent)."""
    value = meta.get("strategy", {"name": "fedavg"})
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise WireError("meta_json: strategy is not an object with a name")
    return dict(value)


def strategy_settings() -> dict[str, Any]:
    """The job's strategy and its settings, as the last task received said: {"name": "fedprox", "mu": 0.01}.

    fedavg has only its name; fedopt also gives its server optimizer's settings (they run on the server).
    Raises JobError before the first receive().
    """
    link = _get()
    if not link.strategy:
        raise JobError("strategy_settings() before the first receive(): the server has not said it yet")
    return dict(link.strategy)


def send(model: FLModel) -> bool:
    """Send this site's result for the last received task; return whether the server accepted it.

    A result the server refuses (a stale round, a bad update) returns False
    and logs the server's reason as a warning ("fedsec: site-2 round 0: update
    refused: tensor 'w' has shape (9, 1), the model has (8, 1)"), which reaches
    the job's log even when the script set up no logging; the script goes on with receive().
    """
    link = _get()
    task = link.last
    if task is None:
        raise JobError("send() before receive(): there is no task to answer")
    if len(model.metrics) > limits.MAX_METRICS:
        raise WireError(f"more than {limits.MAX_METRICS} metrics")
    metrics = {str(k): float(v) for k, v in model.metrics.items()}
    meta = json.dumps({**model.meta, "params_type": model.params_type.value})
    payload = arrays.encode(model.params) if model.params is not None else b""  # the site encrypts it in HE jobs
    if len(meta) > limits.MAX_META_JSON_BYTES:
        raise WireError("meta is larger than its limit")
    digest = hashlib.sha256(payload).digest()
    header = fedsec_pb2.ResultHeader(
        job_id=link.job_id,
        current_round=task.current_round,
        task=task.task,
        metrics=metrics,
        meta_json=meta,
        payload=fedsec_pb2.PayloadInfo(total_size=len(payload), sha256=digest),
    )

    def parts() -> Iterator[fedsec_pb2.ResultPart]:
        yield fedsec_pb2.ResultPart(header=header)
        for chunk in streams.bytes_chunks(payload):
            yield fedsec_pb2.ResultPart(data=chunk)

    reply = _retry(lambda: link.stub.SubmitResult(parts(), timeout=600, metadata=link.metadata), "send")
    link.last = None
    if not reply.accepted:  # the server's reason names the round and, for a bad update, the tensor that differs
        reason = str(reply.reason)
        line = (
            reason
            if reason.startswith(f"{link.site} round ")
            else f"round {task.current_round}: result refused: {reason}"
        )
        log.warning("fedsec: %s", line)
    return bool(reply.accepted)


def send_events(events: list[Event]) -> None:
    """Hand a batch of tracking events to this site (SummaryWriter's transport); raises FedsecError on failure.

    The site stores them durably before it answers; it forwards them to the server.
    """
    init()
    link = _get()
    batch = fedsec_pb2.EventBatch(job_id=link.job_id, events=[to_proto(e) for e in events])
    link.stub.SendEvents(batch, timeout=30, metadata=link.metadata)


def dataset_path(name: str) -> Path:
    """The path of a data set the site operator listed under name (local/site_settings.yml: datasets).

    It is mounted read-only at that path in the job's sandbox. Raises JobError
    when this site lists no data set of that name.
    """
    text = os.environ.get(ENV_DATASETS, "")
    try:
        datasets = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise JobError(f"{ENV_DATASETS} is not JSON") from exc
    path = datasets.get(name) if isinstance(datasets, dict) else None
    if not isinstance(path, str):
        listed = ", ".join(sorted(datasets)) if isinstance(datasets, dict) and datasets else "none"
        raise JobError(f"site {os.environ.get(ENV_SITE, '?')} has no data set {name!r} (it lists: {listed})")
    return Path(path)


def current_round() -> int:
    """The round of the last task received (0 before the first)."""
    last = _get().last
    return last.current_round if last is not None else 0


def _retry(call: Any, what: str) -> Any:
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if not transient(exc) or time.monotonic() > deadline:
                detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                raise FedsecError(f"{what}: {detail}") from exc
            if _link is not None and nobody_listens(_link.socket):
                # the site's process is gone (a server outage is relayed by it, never a refused socket):
                # a job it started must not live on, even one its death signal missed
                raise JobError(f"{what}: the site that started this job is gone; stopping") from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
