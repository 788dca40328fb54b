"""The workflow service's streams: a cancelled result stream is an interrupted upload, not a bad one; a task
whose model the site holds is sent without its bytes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from fedsec import limits
from fedsec.errors import TransferInterruptedError, WireError
from fedsec.wire import fedsec_pb2, streams
from fedsec.workflow.service import WorkflowService, _data
from tests.unit.workflow.test_fedavg import JOB_ID, Job


def _parts(*data: bytes, then: BaseException | None = None) -> Iterator[fedsec_pb2.ResultPart]:
    for chunk in data:
        yield fedsec_pb2.ResultPart(data=chunk)
    if then is not None:
        raise then


def test_a_cancelled_stream_is_an_interrupted_transfer() -> None:
    chunks = _data(_parts(b"ab", b"cd", then=grpc.RpcError()))
    assert next(chunks) == b"ab" and next(chunks) == b"cd"
    with pytest.raises(TransferInterruptedError, match="cancelled before its end"):
        next(chunks)


def test_a_second_header_is_a_protocol_error() -> None:
    parts = iter([fedsec_pb2.ResultPart(data=b"x"), fedsec_pb2.ResultPart(header=fedsec_pb2.ResultHeader())])
    with pytest.raises(WireError) as err:
        list(_data(parts))
    assert not isinstance(err.value, TransferInterruptedError)


def test_tracking_quota_per_site_and_per_job(caplog: pytest.LogCaptureFixture) -> None:
    from fedsec.workflow.service import TrackingQuota

    quota = TrackingQuota(per_site=100, per_job=250)
    with caplog.at_level(logging.WARNING, logger="fedsec.workflow.service"):
        assert quota.allows("site-1")
        quota.add("site-1", 100)
        assert not quota.allows("site-1") and not quota.allows("site-1")  # its share is used up
        assert quota.allows("site-2")  # another site's share is its own
        quota.add("site-2", 99)
        quota.add("site-3", 60)
        assert not quota.allows("site-4")  # the job's total is reached: nobody writes more
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # one line per site, however often it sends
    assert "site-1 wrote 0 MiB of tracking events, its quota for one job" in warnings[0]
    assert "the quota of one job; later events of site-4 are dropped" in warnings[1]


class _Context:
    """Enough of a grpc.ServicerContext for a handler that does not fail."""

    def peer(self) -> str:
        return "unix:test"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted {code}: {details}")


def _task_parts(service: WorkflowService, held: list[bytes]) -> list[fedsec_pb2.TaskPart]:
    request = fedsec_pb2.TaskRequest(job_id=JOB_ID, site="site-1", wait_seconds=10, held_sha256=held)
    return list(service.GetTask(request, cast(grpc.ServicerContext, _Context())))


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Job]:
    job = Job(tmp_path / "job", num_rounds=1, min_clients=1)
    yield job
    job.close()


def test_a_task_whose_model_the_site_holds_comes_without_its_bytes(job: Job, caplog: pytest.LogCaptureFixture) -> None:
    fedavg = job.fedavg()
    service = WorkflowService(fedavg, 1)
    fedavg.update_sites(["site-1"])
    job.start(fedavg)
    initial = job.folder / "app" / "initial_model.fsa"
    digest = hashlib.sha256(initial.read_bytes()).digest()
    with caplog.at_level(logging.INFO, logger="fedsec.workflow.service"):
        sent = _task_parts(service, [hashlib.sha256(b"another model").digest()])
        held = _task_parts(service, [hashlib.sha256(b"another model").digest(), digest])
    assert b"".join(p.data for p in sent[1:]) == initial.read_bytes()
    assert not sent[0].header.model_held
    assert [p.WhichOneof("part") for p in held] == ["header"]  # no data follows
    assert held[0].header.model_held
    assert held[0].header.payload.sha256 == digest and held[0].header.payload.total_size == initial.stat().st_size
    size = initial.stat().st_size
    assert f"round=0 site=site-1 train task model_bytes={size} sent={size}" in caplog.text
    assert f"round=0 site=site-1 train task model_bytes={size} sent=0 (the site holds it)" in caplog.text


@pytest.mark.parametrize("held", [[b"short"], [bytes(32)] * (limits.MAX_HELD_MODELS + 1)])
def test_held_digests_are_bounded(held: list[bytes]) -> None:
    with pytest.raises(WireError, match="held model"):
        streams.held_digests(held, "task request of site-1")
