"""A job's local endpoint: its token and job id are enforced, and the signed job (not the task) decides HE."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest

from fedsec.jobs.meta import HEConfig, StrategyConfig, StrategyKind
from fedsec.site.local import JobEndpoint, LocalEndpoints
from fedsec.site.spool import EventSpool
from fedsec.transport.local import TOKEN_METADATA, unix_channel
from fedsec.wire import arrays, fedsec_pb2, fedsec_pb2_grpc, streams

HE_ON = HEConfig(enabled=True, clip=4.0, max_examples=100, max_clients=16)
HE_META = {"clip": 4.0, "max_examples": 100, "max_clients": 16}
MODEL = arrays.encode({"w": np.arange(4, dtype=np.float32)})


class _Stream:
    """What a server-streaming call returns: an iterator that can be cancelled."""

    def __init__(self, parts: list[fedsec_pb2.TaskPart]) -> None:
        self._parts = iter(parts)
        self.cancelled = False

    def __iter__(self) -> Iterator[fedsec_pb2.TaskPart]:
        return self

    def __next__(self) -> fedsec_pb2.TaskPart:
        return next(self._parts)

    def cancel(self) -> None:
        self.cancelled = True


class FakeServer:
    """Stands for the server's Federation stub: answers one task with the given meta, records calls."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.task_requests: list[fedsec_pb2.TaskRequest] = []
        self.results: list[fedsec_pb2.ResultHeader] = []
        self.uploads: list[list[fedsec_pb2.ResultPart]] = []  # the parts after each result's header

    def GetTask(self, request: fedsec_pb2.TaskRequest, timeout: float) -> _Stream:
        self.task_requests.append(request)
        header = fedsec_pb2.TaskHeader(
            status=fedsec_pb2.TASK_STATUS_TASK,
            task="train",
            current_round=3,
            num_rounds=5,
            meta_json=json.dumps(self.meta),
            payload=streams.describe_bytes(MODEL),
        )
        data = [fedsec_pb2.TaskPart(data=c) for c in streams.bytes_chunks(MODEL)]
        return _Stream([fedsec_pb2.TaskPart(header=header), *data])

    def SubmitResult(self, parts: Iterator[fedsec_pb2.ResultPart], timeout: float) -> fedsec_pb2.ResultReply:
        first = next(parts)
        self.results.append(first.header)
        self.uploads.append(list(parts))
        return fedsec_pb2.ResultReply(accepted=True)


@pytest.fixture
def endpoints(tmp_path: Path) -> Iterator[tuple[LocalEndpoints, dict[str, FakeServer]]]:
    server: dict[str, FakeServer] = {"stub": FakeServer({"job": "x", "he": None, "encrypted": False})}
    eps = LocalEndpoints(
        tmp_path / "sockets",
        "site-1",
        lambda: cast(fedsec_pb2_grpc.FederationStub, server["stub"]),
        EventSpool(tmp_path / "spool"),
        lambda: None,
        _no_key,
    )
    (tmp_path / "sockets").mkdir(mode=0o700)
    yield eps, server
    eps.close_all()


def _no_key() -> Any:
    raise AssertionError("a plain job must never load the HE key")


def _stub(ep: JobEndpoint) -> fedsec_pb2_grpc.FederationStub:
    return fedsec_pb2_grpc.FederationStub(unix_channel(ep.socket))


def _task(ep: JobEndpoint, token: str, job_id: str = "") -> list[fedsec_pb2.TaskPart]:
    request = fedsec_pb2.TaskRequest(job_id=job_id, wait_seconds=0)
    return list(_stub(ep).GetTask(request, timeout=10, metadata=((TOKEN_METADATA, token),)))


def test_each_job_has_its_own_socket_and_token(endpoints: Any, tmp_path: Path) -> None:
    eps, _ = endpoints
    a = eps.open("job-a", HEConfig(), tmp_path)
    b = eps.open("job-b", HEConfig(), tmp_path)
    assert a.socket != b.socket and a.token != b.token and len(a.token) >= 43
    assert (a.socket.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("who", ["no token", "other job's token on my socket", "my token on the other socket"])
def test_a_call_without_the_job_token_is_refused(endpoints: Any, tmp_path: Path, who: str) -> None:
    eps, server = endpoints
    a = eps.open("job-a", HEConfig(), tmp_path)
    b = eps.open("job-b", HEConfig(), tmp_path)
    target, token = {"no token": (a, ""), "other job's token on my socket": (a, b.token)}.get(who, (a, b.token))
    with pytest.raises(grpc.RpcError) as err:
        _task(target, token)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert server["stub"].task_requests == []


def test_a_call_naming_another_job_is_refused(endpoints: Any, tmp_path: Path) -> None:
    eps, server = endpoints
    eps.open("job-a", HEConfig(), tmp_path)
    b = eps.open("job-b", HEConfig(), tmp_path)
    with pytest.raises(grpc.RpcError) as err:
        _task(b, b.token, job_id="job-a")
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    header = fedsec_pb2.ResultHeader(job_id="job-a", payload=streams.describe_bytes(b""))
    with pytest.raises(grpc.RpcError) as err:
        _stub(b).SubmitResult(iter([fedsec_pb2.ResultPart(header=header)]), metadata=((TOKEN_METADATA, b.token),))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        _stub(b).SendEvents(fedsec_pb2.EventBatch(job_id="job-a"), metadata=((TOKEN_METADATA, b.token),))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert server["stub"].task_requests == [] and server["stub"].results == []


def test_the_job_id_comes_from_the_token(endpoints: Any, tmp_path: Path) -> None:
    eps, server = endpoints
    b = eps.open("job-b", HEConfig(), tmp_path)
    parts = _task(b, b.token)
    assert parts[0].header.status == fedsec_pb2.TASK_STATUS_TASK
    assert [r.job_id for r in server["stub"].task_requests] == ["job-b"]
    header = fedsec_pb2.ResultHeader(current_round=3, payload=streams.describe_bytes(b""))
    reply = _stub(b).SubmitResult(iter([fedsec_pb2.ResultPart(header=header)]), metadata=((TOKEN_METADATA, b.token),))
    assert reply.accepted and [h.job_id for h in server["stub"].results] == ["job-b"]


@pytest.mark.parametrize(
    ("signed", "meta"),
    [
        (HEConfig(), {"he": HE_META, "encrypted": True}),  # the server turns HE on for a plain job
        (HEConfig(), {"he": None, "encrypted": True}),
        (HE_ON, {"he": None, "encrypted": False}),  # the server turns HE off
        (HE_ON, {"he": {**HE_META, "clip": 1000.0}, "encrypted": True}),  # other parameters
        (HE_ON, {"he": {**HE_META, "max_clients": 1}, "encrypted": False}),
        (HE_ON, {"he": {**HE_META, "max_examples": 1}, "encrypted": True}),
        (HE_ON, {"encrypted": True}),
    ],
)
def test_a_task_that_disagrees_with_the_signed_job_is_not_handed_to_the_script(
    endpoints: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, signed: HEConfig, meta: dict[str, Any]
) -> None:
    eps, server = endpoints
    server["stub"] = FakeServer({"job": "x", **meta})
    ep = eps.open("job-a", signed, tmp_path)
    with caplog.at_level(logging.ERROR):
        parts = _task(ep, ep.token)
    assert [p.header.status for p in parts] == [fedsec_pb2.TASK_STATUS_WAIT]
    assert "job=job-a refused a task that disagrees with the signed job" in caplog.text
    assert server["stub"].task_requests  # the server was asked: its answer was refused


PROX = StrategyConfig(StrategyKind.FEDPROX, mu=0.1)


@pytest.mark.parametrize(
    ("signed", "said"),
    [
        (StrategyConfig(), {"name": "fedprox", "mu": 0.1}),  # the server turns FedProx on
        (PROX, {"name": "fedprox", "mu": 0.2}),  # another mu
        (PROX, {"name": "fedavg"}),
        (PROX, None),  # a task naming no strategy is a fedavg task
        (PROX, "fedprox"),
    ],
)
def test_a_task_whose_strategy_disagrees_with_the_signed_job_is_not_handed_to_the_script(
    endpoints: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, signed: StrategyConfig, said: Any
) -> None:
    eps, server = endpoints
    server["stub"] = FakeServer(
        {"job": "x", "he": None, "encrypted": False, **({} if said is None else {"strategy": said})}
    )
    ep = eps.open("job-a", HEConfig(), tmp_path, strategy=signed)
    with caplog.at_level(logging.ERROR):
        parts = _task(ep, ep.token)
    assert [p.header.status for p in parts] == [fedsec_pb2.TASK_STATUS_WAIT]
    assert "job=job-a refused a task that disagrees with the signed job" in caplog.text


@pytest.mark.parametrize("said", [{"name": "fedprox", "mu": 0.1}, {"mu": 0.1, "name": "fedprox"}])
def test_a_task_saying_the_signed_strategy_reaches_the_script(endpoints: Any, tmp_path: Path, said: Any) -> None:
    eps, server = endpoints
    server["stub"] = FakeServer({"job": "x", "he": None, "encrypted": False, "strategy": said})
    ep = eps.open("job-a", HEConfig(), tmp_path, strategy=PROX)
    parts = _task(ep, ep.token)
    assert parts[0].header.status == fedsec_pb2.TASK_STATUS_TASK
    assert json.loads(parts[0].header.meta_json)["strategy"] == {"name": "fedprox", "mu": 0.1}


def test_he_job_hands_the_script_plain_arrays_and_sends_ciphertexts(endpoints: Any, tmp_path: Path) -> None:
    he = pytest.importorskip("fedsec.he.context")
    client_ctx, _server_ctx = he.make_contexts()
    ctx = he.load_client_context(client_ctx, "test context")
    eps, server = endpoints
    eps._link = dataclasses.replace(eps._link, he_context=lambda: ctx)
    server["stub"] = FakeServer({"job": "x", "he": HE_META, "encrypted": False})  # round 0: the plain initial model
    ep = eps.open("job-a", HE_ON, tmp_path)
    parts = _task(ep, ep.token)
    assert json.loads(parts[0].header.meta_json)["encrypted"] is False
    got = arrays.decode(b"".join(p.data for p in parts[1:]))
    assert np.array_equal(got["w"], np.arange(4, dtype=np.float32))
    diff = arrays.encode({"w": np.ones(4, dtype=np.float32)})
    header = fedsec_pb2.ResultHeader(
        current_round=3,
        task="train",
        meta_json=json.dumps({"params_type": "diff", "num_examples": 50}),
        payload=streams.describe_bytes(diff),
    )
    reply = _stub(ep).SubmitResult(
        iter([fedsec_pb2.ResultPart(header=header), fedsec_pb2.ResultPart(data=diff)]),
        metadata=((TOKEN_METADATA, ep.token),),
    )
    assert reply.accepted
    sent = server["stub"].results[0]
    assert json.loads(sent.meta_json) == {"params_type": "full", "encrypted": True}  # no num_examples upstream
    # sent as it was encrypted: a bound first, the size and digest after the data
    assert sent.payload_trailer and not sent.payload.sha256
    upload = tmp_path / "upload.fsh"
    with streams.PayloadWriter(upload, sent.payload, 1 << 30, "upload", trailer=True) as writer:
        for part in server["stub"].uploads[0]:
            writer.write(part.data if part.WhichOneof("part") == "data" else part.trailer)
        writer.finish()
    from fedsec.he.codec import decrypt_model

    full, _ = decrypt_model(ctx, upload.read_bytes(), "upload")  # the global model plus the difference
    assert np.allclose(full["w"], np.arange(4) + 1, atol=1e-3)
    assert not list(tmp_path.parent.glob(".upload-*"))  # the kept copy (beside work/) went with the upload


class HoldingServer(FakeServer):
    """Sends MODEL's bytes only when the request does not name it as held (or always_held: never)."""

    def __init__(self, meta: dict[str, Any], always_held: bool = False) -> None:
        super().__init__(meta)
        self.always_held = always_held

    def GetTask(self, request: fedsec_pb2.TaskRequest, timeout: float) -> _Stream:
        self.task_requests.append(request)
        held = self.always_held or hashlib.sha256(MODEL).digest() in request.held_sha256
        header = fedsec_pb2.TaskHeader(
            status=fedsec_pb2.TASK_STATUS_TASK,
            task="train",
            current_round=0,
            num_rounds=5,
            meta_json=json.dumps(self.meta),
            payload=streams.describe_bytes(MODEL),
            model_held=held,
        )
        data = [] if held else [fedsec_pb2.TaskPart(data=c) for c in streams.bytes_chunks(MODEL)]
        return _Stream([fedsec_pb2.TaskPart(header=header), *data])


def _named(server: FakeServer) -> list[list[bytes]]:
    return [list(r.held_sha256) for r in server.task_requests]


def test_the_initial_model_of_the_signed_job_is_not_downloaded_again(
    endpoints: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eps, server = endpoints
    server["stub"] = HoldingServer({"job": "x", "he": None, "encrypted": False})
    initial = tmp_path / "initial_model.fsa"
    initial.write_bytes(MODEL)
    ep = eps.open("job-a", HEConfig(), tmp_path / "work", initial_model=initial)
    with caplog.at_level(logging.INFO, logger="fedsec.site.local"):
        parts = _task(ep, ep.token)
    assert b"".join(p.data for p in parts[1:]) == MODEL  # the script gets the bytes, from the site's copy
    assert not parts[0].header.model_held
    assert _named(server["stub"]) == [[hashlib.sha256(MODEL).digest()]]
    assert f"job=job-a round=0 train task model_bytes={len(MODEL)} downloaded=0" in caplog.text


def test_a_held_copy_that_changed_is_downloaded_instead(endpoints: Any, tmp_path: Path) -> None:
    eps, server = endpoints
    server["stub"] = HoldingServer({"job": "x", "he": None, "encrypted": False})
    initial = tmp_path / "initial_model.fsa"
    initial.write_bytes(MODEL)
    ep = eps.open("job-a", HEConfig(), tmp_path / "work", initial_model=initial)
    _task(ep, ep.token)  # the initial model is hashed, and used
    initial.write_bytes(arrays.encode({"w": np.zeros(4, dtype=np.float32)}))  # e.g. a script wrote over it
    parts = _task(ep, ep.token)
    assert b"".join(p.data for p in parts[1:]) == MODEL
    digest = hashlib.sha256(MODEL).digest()
    assert _named(server["stub"]) == [[digest], [digest], []]  # named, refused on use, then downloaded


def test_the_last_model_received_is_held_for_a_second_ask(endpoints: Any, tmp_path: Path) -> None:
    eps, server = endpoints
    server["stub"] = HoldingServer({"job": "x", "he": None, "encrypted": False})
    (tmp_path / "work").mkdir()
    ep = eps.open("job-a", HEConfig(), tmp_path / "work")
    first, second = _task(ep, ep.token), _task(ep, ep.token)
    assert b"".join(p.data for p in first[1:]) == b"".join(p.data for p in second[1:]) == MODEL
    assert _named(server["stub"]) == [[], [hashlib.sha256(MODEL).digest()]]
    assert not any(p.name == ".last-model" for p in (tmp_path / "work").iterdir())  # kept out of the script's folder


def test_a_server_naming_a_model_the_site_does_not_hold_is_refused(endpoints: Any, tmp_path: Path) -> None:
    eps, server = endpoints
    server["stub"] = HoldingServer({"job": "x", "he": None, "encrypted": False}, always_held=True)
    ep = eps.open("job-a", HEConfig(), tmp_path)
    with pytest.raises(grpc.RpcError) as err:
        _task(ep, ep.token)
    assert "naming one this site does not hold" in str(err.value)
