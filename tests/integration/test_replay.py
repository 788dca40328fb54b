"""A signed job runs once: the server and the sites refuse an already-run signed archive under any id."""

from __future__ import annotations

import base64
import json
import signal
import uuid
from pathlib import Path

import grpc
import pytest

from fedsec.api import Session
from fedsec.jobs.signing import JobSignature, verify_archive
from fedsec.kit import load_kit, read_ca
from fedsec.wire import fedsec_pb2, streams
from tests.integration.harness import ADMIN, Federation, wait_until
from tests.integration.test_runtime import linear_job

SITES = ["site-1", "site-2"]


def _raw_submit(admin: Session, data: bytes, doc: dict[str, object], job_id: str) -> fedsec_pb2.JobInfo:
    """Submit an archive with a stored signature, as job_id, straight through the admin gRPC API."""
    admin.login()
    signature = fedsec_pb2.JobSignature(
        signature=base64.b64decode(str(doc["signature"])),
        signer_cert=str(doc["signer_cert"]).encode(),
        job_id=job_id,
        submit_time=int(str(doc["submit_time"])),
    )
    first = fedsec_pb2.SubmitPart(info=streams.describe_bytes(data), signature=signature)
    parts = [first, *(fedsec_pb2.SubmitPart(data=c) for c in streams.bytes_chunks(data))]
    reply: fedsec_pb2.JobInfo = admin._stub.SubmitJob(
        iter(parts), timeout=60, metadata=[("fedsec-session", admin._token)]
    )
    return reply


def _restart_sites(federation: Federation) -> None:
    mark = len(federation.log("server1"))
    for site in SITES:
        federation.start(site)
    federation.wait_registered(SITES, since=mark)


@pytest.mark.federation(n_clients=2)
def test_an_already_run_signed_job_is_refused(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    store = federation.kit("server1") / "store" / "jobs"
    with Session(federation.admin_kit) as admin:
        ran = admin.submit_job(linear_job(tmp_path, rounds=1, min_clients=2))
        assert admin.wait_for_job(ran, timeout=90).status == "finished:completed"
        data = (store / ran / "job.zip").read_bytes()
        doc = json.loads((store / ran / "job.sig").read_text())
        assert doc["job_id"] == ran

        # 1. The server refuses the signature under a new id, and the same id twice.
        with pytest.raises(grpc.RpcError) as err:
            _raw_submit(admin, data, doc, str(uuid.uuid4()))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "does not match its signature" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            _raw_submit(admin, data, doc, ran)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "exists already" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            _raw_submit(admin, data, doc, "../" + ran)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a job id" in (err.value.details() or "")

        # 2. A server that runs the old signed archive in place of a new job: the sites refuse it.
        for site in SITES:
            federation.kill(site, signal.SIGTERM)
        fresh = admin.submit_job(linear_job(tmp_path, rounds=1, min_clients=2))
        wait_until((store / fresh / "job").is_dir, 30, "the new job stored")
        # (a clone is a new signed run of the stored archive, by the cloning admin, under its own id)
        cloned = admin.clone_job(ran)
        clone_doc = json.loads((store / cloned / "job.sig").read_text())
        assert clone_doc["job_id"] == cloned != ran
        clone_sig = JobSignature(
            base64.b64decode(clone_doc["signature"]),
            clone_doc["signer_cert"].encode(),
            cloned,
            clone_doc["submit_time"],
        )
        root = read_ca(load_kit(federation.admin_kit))
        assert verify_archive(data, clone_sig, root, "clone", job_id=cloned).name == ADMIN
        admin.abort_job(cloned)
        (store / fresh / "job.zip").write_bytes(data)
        (store / fresh / "job.sig").write_text(json.dumps(doc))
        _restart_sites(federation)
        info = admin.wait_for_job(fresh, timeout=90)
        assert info.status == "finished:failed"
        assert "refused the job" in info.reason and f"the signature is for job '{ran}'" in info.reason, info.reason
        assert not any((federation.kit(s) / "jobs" / fresh).exists() for s in SITES)  # nothing unpacked

        # 3. A server that forgot the job (deleted it) accepts it again; the sites remember it ran.
        admin.delete_job(ran)
        assert _raw_submit(admin, data, doc, ran).job_id == ran
        info = admin.wait_for_job(ran, timeout=90)
    assert info.status == "finished:failed"
    assert "already ran this job to its end" in info.reason, info.reason
    assert "refused the job" in info.reason
