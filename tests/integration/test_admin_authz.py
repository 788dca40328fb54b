"""Role-based authorization, the audit log, signed jobs and admin sessions, against a real server."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import grpc
import pytest

from fedsec.api import Session
from fedsec.errors import AuthError
from fedsec.jobs import pack
from fedsec.jobs.signing import new_job_id, sign_archive
from fedsec.pki import certs, login
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams
from tests.integration.harness import ADMIN, Federation, wait_until
from tests.integration.test_runtime import linear_job

ADMINS = (
    ("member@acme.org", "acme", "member"),
    ("lead1@acme.org", "acme", "lead"),
    ("lead2@acme.org", "acme", "lead"),
    ("lead3@beta.org", "beta", "lead"),
    ("orgadmin@acme.org", "acme", "org_admin"),
    ("orgadmin@beta.org", "beta", "org_admin"),
)


def session(fed: Federation, name: str) -> Session:
    return Session(fed.kit(name))


@pytest.mark.federation(n_clients=2, extra_admins=ADMINS)
def test_roles_are_enforced_and_audited(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    slow = ("--sleep", "30")
    with session(federation, "member@acme.org") as member:
        assert member.list_jobs() == []  # members may view
        with pytest.raises(AuthError, match="role member may not submit_job"):
            member.submit_job(linear_job(tmp_path, *slow))
    with session(federation, "lead1@acme.org") as lead1:
        job_a = lead1.submit_job(linear_job(tmp_path, *slow))
    with session(federation, "lead3@beta.org") as lead3:
        job_c = lead3.submit_job(linear_job(tmp_path, *slow))
    with session(federation, "member@acme.org") as member, pytest.raises(AuthError, match="may not manage_job"):
        member.abort_job(job_a)
    with session(federation, "lead2@acme.org") as lead2:
        with pytest.raises(AuthError, match="may not manage_job job of lead1@acme.org"):
            lead2.abort_job(job_a)
        with pytest.raises(AuthError, match="may not download_job"):
            lead2.download_job_result(job_a)
    with session(federation, "orgadmin@beta.org") as beta_admin:
        with pytest.raises(AuthError, match="may not manage_job job of lead1@acme.org"):
            beta_admin.abort_job(job_a)
        assert beta_admin.abort_job(job_c).status == "finished:aborted"  # its own org's lead
    with session(federation, "orgadmin@acme.org") as acme_admin:
        assert acme_admin.abort_job(job_a).status == "finished:aborted"
        with pytest.raises(AuthError, match="project admins only"):
            acme_admin.show_audit()
    with Session(federation.admin_kit) as admin:
        audit = admin.show_audit(200)
    refused = {(e["admin"], e["command"]) for e in audit if e["outcome"] == "refused"}
    assert refused == {
        ("member@acme.org", "submit_job"),
        ("member@acme.org", "abort_job"),
        ("lead2@acme.org", "abort_job"),
        ("lead2@acme.org", "download_job"),
        ("orgadmin@beta.org", "abort_job"),
        ("orgadmin@acme.org", "show_audit"),
    }
    allowed = [(e["admin"], e["command"], e["args"].get("job", "")) for e in audit if e["outcome"] == "allowed"]
    assert ("orgadmin@acme.org", "abort_job", job_a) in allowed
    assert all({"time", "role", "org", "detail"} <= set(e) for e in audit)
    db = federation.kit("server1") / "store" / "jobs.db"  # the trail is in the server's state (sqlite here)
    assert db.stat().st_mode & 0o777 == 0o600


def _tamper_before_sites_fetch(federation: Federation, tmp_path: Path, change: str) -> str:
    """Submit with no site connected, change what the server stores, then let the sites fetch it."""
    federation.start("server1")
    with Session(federation.admin_kit) as admin:
        job_id = admin.submit_job(linear_job(tmp_path, rounds=1, min_clients=2))
        store = federation.kit("server1") / "store" / "jobs" / job_id
        wait_until((store / "job.sig").exists, 10, "the stored job")
        if change == "archive":
            data = bytearray((store / "job.zip").read_bytes())
            data[len(data) // 2] ^= 0xFF
            (store / "job.zip").write_bytes(bytes(data))
        else:  # re-signed with a site's key, as a compromised server might
            site = federation.kit("site-1") / "startup"
            key = certs.load_key((site / "site-1.key").read_bytes(), "site key")
            doc = json.loads((store / "job.sig").read_text())
            run = {"job_id": doc["job_id"], "submit_time": doc["submit_time"]}
            sig = sign_archive((store / "job.zip").read_bytes(), key, (site / "site-1.crt").read_bytes(), **run)
            doc |= {"signature": base64.b64encode(sig.signature).decode(), "signer_cert": sig.signer_cert.decode()}
            (store / "job.sig").write_text(json.dumps(doc))
        for i in (1, 2, 3):
            federation.start(f"site-{i}")
        info = admin.wait_for_job(job_id, timeout=60)
    assert info.status == "finished:failed"
    return info.reason


def test_archive_changed_after_signing_is_refused_by_sites(federation: Federation, tmp_path: Path) -> None:
    reason = _tamper_before_sites_fetch(federation, tmp_path, "archive")
    assert "refused the job" in reason and "does not match its signature" in reason
    assert not list(federation.prod.glob("site-*/jobs/*/job"))  # nothing was unpacked anywhere


def test_job_signed_by_a_site_key_is_refused_by_sites(federation: Federation, tmp_path: Path) -> None:
    reason = _tamper_before_sites_fetch(federation, tmp_path, "site-signature")
    assert "refused the job" in reason and "site certificate 'site-1', not by an admin" in reason
    assert not list(federation.prod.glob("site-*/jobs/*/job"))


def test_server_refuses_a_job_not_signed_by_its_submitter(federation: Federation, tmp_path: Path) -> None:
    federation.start("server1")
    folder = linear_job(tmp_path)
    data = pack(folder)
    site = federation.kit("site-1") / "startup"
    key = certs.load_key((site / "site-1.key").read_bytes(), "k")
    sig = sign_archive(data, key, (site / "site-1.crt").read_bytes(), job_id=new_job_id(), submit_time=int(time.time()))
    with Session(federation.admin_kit) as admin:
        admin.login()
        first = fedsec_pb2.SubmitPart(
            info=streams.describe_bytes(data),
            signature=fedsec_pb2.JobSignature(
                signature=sig.signature, signer_cert=sig.signer_cert, job_id=sig.job_id, submit_time=sig.submit_time
            ),
        )
        parts = [first, *(fedsec_pb2.SubmitPart(data=c) for c in streams.bytes_chunks(data))]
        with pytest.raises(grpc.RpcError) as err:
            admin._stub.SubmitJob(iter(parts), timeout=30, metadata=[("fedsec-session", admin._token)])
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "not by an admin" in (err.value.details() or "")
        assert admin.list_jobs() == []


@pytest.mark.federation(n_clients=1, admin_session_timeout=1.5)
def test_session_expires_and_logs_in_again(federation: Federation) -> None:
    federation.start("server1")
    relogins: list[int] = []
    with Session(federation.admin_kit) as admin:
        admin.on_relogin = lambda: relogins.append(1)
        assert admin.list_jobs() == []
        time.sleep(2.0)  # idle past the session timeout
        assert admin.list_jobs() == []
        assert relogins == [1]
        audit = admin.show_audit(20)
    assert [e["command"] for e in audit if e["command"] == "login"] == ["login", "login"]


def test_login_cannot_be_replayed(federation: Federation) -> None:
    federation.start("server1")
    with Session(federation.admin_kit) as admin:
        stub: fedsec_pb2_grpc.AdminStub = admin._stub
        challenge = stub.GetChallenge(fedsec_pb2.Empty(), timeout=10, wait_for_ready=True)
        key = certs.load_key(admin.kit.key_path.read_bytes(), "k")
        signature = login.sign_login(key, challenge.nonce, "server1", ADMIN)
        request = fedsec_pb2.LoginRequest(nonce=challenge.nonce, signature=signature)
        assert stub.Login(request, timeout=10).token
        with pytest.raises(grpc.RpcError) as err:
            stub.Login(request, timeout=10)  # the same signed challenge, captured and replayed
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # no session token, no command
        with pytest.raises(grpc.RpcError) as err:
            stub.ListJobs(fedsec_pb2.ListJobsRequest(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.federation(n_clients=2, site_orgs=("acme", "beta"), extra_admins=ADMINS)
def test_operate_reaches_only_the_admins_own_orgs_sites(federation: Federation) -> None:
    federation.start_all()
    with session(federation, "orgadmin@beta.org") as beta_admin:
        for act in (
            lambda: beta_admin.remove_client("site-1"),
            lambda: beta_admin.sys_info("site-1"),
            lambda: beta_admin.shutdown("client", ["site-1"]),
            lambda: beta_admin.shutdown("client", ["site-2", "site-1"]),
        ):
            with pytest.raises(AuthError, match=r"may not operate site site-1 \(org acme\)"):
                act()
        for act in (
            lambda: beta_admin.shutdown("server"),
            lambda: beta_admin.shutdown("all"),
            lambda: beta_admin.shutdown("client"),  # every site
            lambda: beta_admin.sys_info("server"),
        ):
            with pytest.raises(AuthError, match="may not operate the server or every site"):
                act()
        assert beta_admin.sys_info("site-2")  # its own org's site
        beta_admin.remove_client("site-2")
        beta_admin.enable_client("site-2")  # the removed site's org is remembered
    with session(federation, "lead1@acme.org") as lead, pytest.raises(AuthError, match="role lead may not operate"):
        lead.sys_info("site-1")
    assert federation.procs["server1"].poll() is None  # the server and site-1 are still up
    assert federation.procs["site-1"].poll() is None
    with Session(federation.admin_kit) as admin:
        clients = {c["name"]: c for c in admin.list_clients()}
        assert clients["site-1"]["alive"] and not clients["site-1"]["removed"]
        refused = [(e["admin"], e["command"]) for e in admin.show_audit(200) if e["outcome"] == "refused"]
    assert refused.count(("orgadmin@beta.org", "shutdown")) == 5
