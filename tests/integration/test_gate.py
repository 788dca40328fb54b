"""Silent peers cannot starve a port: the gate checks the certificate first, bounds calls per peer and lane,
and cancels a stream whose first message does not come."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedsec import limits
from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from fedsec.kit import load_kit
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2_grpc
from tests.integration.harness import Federation, wait_until
from tests.integration.test_admin_authz import ADMINS
from tests.integration.test_runtime import INITIAL, SCRIPT, linear_job


def _silent(stop: threading.Event) -> Iterator[Any]:
    """A request stream that opens and sends nothing until stop is set."""
    stop.wait(300)
    yield from ()


def _port(fed: Federation, which: str) -> int:
    config = load_kit(fed.kit("server1")).config
    return int(getattr(config, which))


def _codes(calls: list[grpc.Future]) -> list[grpc.StatusCode]:
    codes = []
    for call in calls:
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    return codes


@pytest.mark.federation(n_clients=1, extra_admins=ADMINS)
def test_silent_uploads_do_not_block_the_admin_port(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    stop = threading.Event()
    member = load_kit(federation.kit("member@acme.org"))
    ch = channel(member, "localhost", _port(federation, "admin_port"), "server1")
    try:
        stub = fedsec_pb2_grpc.AdminStub(ch)
        calls = [stub.SubmitJob.future(_silent(stop), timeout=120) for _ in range(10)]
        # the project admin logs in and works while the member's ten streams are open
        with Session(federation.admin_kit) as admin:
            job_id = admin.submit_job(linear_job(tmp_path, rounds=1, min_clients=1))
            assert admin.wait_for_job(job_id, timeout=240).status == "finished:completed"
        # a bounded number were taken, the rest refused at once; the taken ones end at the first-message deadline
        wait_until(lambda: all(c.done() for c in calls), 120, "the silent streams to end")
        codes = _codes(calls)
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 10 - limits.ADMIN_TRANSFER_PER_PEER
        assert codes.count(grpc.StatusCode.CANCELLED) == limits.ADMIN_TRANSFER_PER_PEER
    finally:
        stop.set()
        ch.close()
    assert "gate: cancelled SubmitJob from member@acme.org" in federation.log("server1")


@pytest.mark.federation(n_clients=1)
def test_a_site_certificate_is_refused_on_the_admin_port_before_anything_is_read(federation: Federation) -> None:
    federation.start_all()
    stop = threading.Event()
    ch = channel(load_kit(federation.kit("site-1")), "localhost", _port(federation, "admin_port"), "server1")
    try:
        call = fedsec_pb2_grpc.AdminStub(ch).SubmitJob.future(_silent(stop), timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            call.result(timeout=60)  # answered while the stream has sent nothing
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "client certificate (site-1) is not accepted on this port" in (err.value.details() or "")
    finally:
        stop.set()
        ch.close()


@pytest.mark.federation(n_clients=3, heartbeat_timeout=3.0)
def test_silent_result_streams_of_one_site_do_not_drop_the_others(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    stop = threading.Event()
    ch = channel(load_kit(federation.kit("site-3")), "localhost", _port(federation, "fl_port"), "server1")
    try:
        stub = fedsec_pb2_grpc.FederationStub(ch)
        calls = [stub.SubmitResult.future(_silent(stop), timeout=120) for _ in range(70)]
        mark = len(federation.log("server1"))
        # a job with every site runs to the end, and nobody is dropped for missed heartbeats meanwhile
        recipe = FedAvgRecipe("linear", INITIAL, SCRIPT, 2, 2, sites=["site-1", "site-2"])
        with Session(federation.admin_kit) as admin:
            job_id = admin.submit_job(recipe.export(tmp_path / "job"))
            info = admin.wait_for_job(job_id, timeout=240)
        assert info.status == "finished:completed", info.reason
        assert all(r["sites"] == ["site-1", "site-2"] for r in info.progress["rounds"])
        assert " is gone" not in federation.log("server1")[mark:]
        wait_until(lambda: all(c.done() for c in calls), 120, "the silent streams to end")
        codes = _codes(calls)
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 70 - limits.SITE_TRANSFER_PER_PEER
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
    finally:
        stop.set()
        ch.close()
