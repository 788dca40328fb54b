"""The site codecs: one per job, from its signed he section; the training script's side is the same with either."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsec.errors import WireError
from fedsec.jobs.meta import HEConfig
from fedsec.site.codec import EncryptedCodec, Parts, PlainCodec, SiteCodec
from fedsec.site.local import JobEndpoint, SiteLink, job_codec
from fedsec.site.spool import EventSpool
from fedsec.wire import arrays, fedsec_pb2, streams

he_context = pytest.importorskip("fedsec.he.context")

HE_ON = HEConfig(enabled=True, clip=4.0, max_examples=100, max_clients=16)
GLOBAL = {"w": np.arange(4, dtype=np.float32)}
KINDS = ["plain", "encrypted"]


@pytest.fixture(scope="module")
def client_ctx() -> Any:
    client, _ = he_context.make_contexts()
    return he_context.load_client_context(client, "client")


def _no_key() -> Any:
    raise AssertionError("a plain job must never load the HE key")


def _codec(kind: str, tmp_path: Path, ctx: Any) -> SiteCodec:
    """The codec the relay picks for a job whose signed he section is kind's."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    endpoint = JobEndpoint("job-a", tmp_path / "1.sock", "token", HE_ON if kind == "encrypted" else HEConfig(), work)
    link = SiteLink("site-1", _no_upstream, EventSpool(tmp_path / "spool"), lambda: None, _no_key)
    if kind == "encrypted":
        link = SiteLink("site-1", _no_upstream, link.spool, link.wake, lambda: ctx)
    return job_codec(endpoint, link)


def _no_upstream() -> Any:
    raise AssertionError("a codec sends only through the send it is given")


def _task(codec: SiteCodec, encrypted: bool, payload: bytes) -> tuple[fedsec_pb2.TaskHeader, bytes]:
    meta = {"job": "x", "he": None, "encrypted": encrypted}
    header = fedsec_pb2.TaskHeader(
        status=fedsec_pb2.TASK_STATUS_TASK,
        task="train",
        current_round=1,
        meta_json=json.dumps(meta),
        payload=streams.describe_bytes(payload),
    )
    return codec.task(header, meta, payload)


def _result(update: bytes, meta: dict[str, Any]) -> fedsec_pb2.ResultHeader:
    return fedsec_pb2.ResultHeader(
        current_round=1, task="train", meta_json=json.dumps(meta), payload=streams.describe_bytes(update)
    )


class Upstream:
    """The send a codec is given: keeps each try's parts; fails the first `fail` tries (a reset link)."""

    def __init__(self, fail: int = 0) -> None:
        self.tries: list[list[fedsec_pb2.ResultPart]] = []
        self.fail = fail

    def __call__(self, parts: Parts) -> fedsec_pb2.ResultReply:
        while True:
            got = list(parts())
            self.tries.append(got)
            if len(self.tries) > self.fail:
                return fedsec_pb2.ResultReply(accepted=True)

    def received(self, folder: Path) -> bytes:
        """The last try's bytes, checked as the server checks them."""
        header, *rest = self.tries[-1]
        path = folder / "received"
        with streams.PayloadWriter(path, header.header.payload, 1 << 30, "upload", header.header.payload_trailer) as w:
            for part in rest:
                w.write(part.data if part.WhichOneof("part") == "data" else part.trailer)
            w.finish()
        return path.read_bytes()


def test_the_codec_is_the_signed_jobs(tmp_path: Path) -> None:
    assert isinstance(_codec("plain", tmp_path, None), PlainCodec)
    assert isinstance(_codec("encrypted", tmp_path, None), EncryptedCodec)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fail", [0, 1], ids=["first try", "after a reset"])
def test_the_script_sees_plain_arrays_and_its_update_reaches_the_server(
    tmp_path: Path, client_ctx: Any, kind: str, fail: int
) -> None:
    from fedsec.he.codec import decrypt_model, encrypt_model

    encrypted = kind == "encrypted"
    codec = _codec(kind, tmp_path, client_ctx)
    sent = encrypt_model(client_ctx, GLOBAL, 1.0, HE_ON.clip) if encrypted else arrays.encode(GLOBAL)
    header, model = _task(codec, encrypted, sent)
    assert json.loads(header.meta_json)["encrypted"] is False  # what the script is handed is plain
    assert header.payload == streams.describe_bytes(model)
    assert np.allclose(arrays.decode(model)["w"], GLOBAL["w"], atol=1e-3)
    diff = arrays.encode({"w": np.ones(4, dtype=np.float32)})
    upstream = Upstream(fail)
    reply = codec.submit(_result(diff, {"params_type": "diff", "num_examples": 50}), iter([diff]), "result", upstream)
    assert reply.accepted and len(upstream.tries) == fail + 1
    got = upstream.received(tmp_path)
    if encrypted:  # the full weights, encrypted: the global model the script received plus its difference
        assert json.loads(upstream.tries[-1][0].header.meta_json) == {"params_type": "full", "encrypted": True}
        assert np.allclose(decrypt_model(client_ctx, got, "upload")[0]["w"], GLOBAL["w"] + 1, atol=1e-3)
    else:
        assert got == diff
    assert not list(tmp_path.glob(".upload-*"))  # the kept copy beside work/ went with the upload


@pytest.mark.parametrize("kind", KINDS)
def test_the_kept_upload_is_removed_when_the_send_fails(tmp_path: Path, client_ctx: Any, kind: str) -> None:
    codec = _codec(kind, tmp_path, client_ctx)
    _task(codec, False, arrays.encode(GLOBAL))  # round 0's plain model

    def send(parts: Parts) -> fedsec_pb2.ResultReply:
        list(parts())
        raise WireError("the server's link failed for good")

    update = arrays.encode({"w": np.ones(4, dtype=np.float32)})
    with pytest.raises(WireError, match="failed for good"):
        codec.submit(_result(update, {"params_type": "full"}), iter([update]), "result", send)
    assert not list(tmp_path.glob(".upload-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_an_upload_that_is_not_what_it_announced_is_refused_and_never_sent(
    tmp_path: Path, client_ctx: Any, kind: str
) -> None:
    codec = _codec(kind, tmp_path, client_ctx)
    _task(codec, False, arrays.encode(GLOBAL))
    update = arrays.encode({"w": np.ones(4, dtype=np.float32)})
    upstream = Upstream()
    header = _result(update, {"params_type": "full"})
    reply = codec.submit(header, iter([update[:-1] + b"x"]), "result of job job-a round 1", upstream)
    assert not reply.accepted and "result of job job-a round 1" in reply.reason
    assert upstream.tries == [] and not list(tmp_path.glob(".upload-*"))


def test_an_encrypted_update_whose_difference_does_not_fit_the_task_is_refused(tmp_path: Path, client_ctx: Any) -> None:
    codec = _codec("encrypted", tmp_path, client_ctx)
    _task(codec, False, arrays.encode(GLOBAL))
    update = arrays.encode({"w": np.ones(5, dtype=np.float32)})
    upstream = Upstream()
    reply = codec.submit(_result(update, {"params_type": "diff"}), iter([update]), "result", upstream)
    assert not reply.accepted and "does not match the global model's tensors" in reply.reason
    assert upstream.tries == []
