"""The authorization matrix: every admin RPC x every role x a target in and out of the caller's org.

Called straight on the Admin gRPC service (an AdminStub with the session token), one federation for
the whole table. The expected answers are the documented defaults (fedsec.provision.templates
AUTHORIZATION_YML): operate is scoped by the target site's org, the server or every site needs
operate any; job rights are scoped by the job's submitter (own_org: its org, own_jobs: the caller).
Every caller is in org acme; the targets are site-1 (acme) and site-2 (beta), and jobs of
lead@acme.org and lead@beta.org. "Allowed" means anything but PERMISSION_DENIED (the command may
still fail on the target's state, as a refused one never gets that far); INTERNAL is never right.
"""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from fedsec.api import Session
from fedsec.jobs.signing import sign_archive
from fedsec.kit import ServerConfig, load_kit
from fedsec.pki import certs
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams
from tests.integration.harness import ADMIN, Federation, wait_until
from tests.integration.test_runtime import linear_job

ROLES = {
    "project_admin": ADMIN,
    "org_admin": "orgadmin@acme.org",
    "lead": "lead@acme.org",
    "member": "member@acme.org",
}
ADMINS = (
    ("orgadmin@acme.org", "acme", "org_admin"),
    ("lead@acme.org", "acme", "lead"),
    ("member@acme.org", "acme", "member"),
    ("lead@beta.org", "beta", "lead"),
)
SITE = {"in": "site-1", "out": "site-2"}  # site-1 is acme's, site-2 beta's
JOB_OWNER = {"in": "lead@acme.org", "out": "lead@beta.org"}
BAD_JOB_ID = "not-a-uuid"  # signed job ids of allowed submissions and clones: refused after authorization


# ---------------------------------------------------------------- the documented defaults

ANY, OWN_ORG, OWN_JOBS, NONE = "any", "own_org", "own_jobs", "none"
SCOPES = {  # AUTHORIZATION_YML
    "project_admin": {"submit_job": ANY, "clone_job": ANY, "manage_job": ANY, "download_job": ANY, "operate": ANY},
    "org_admin": {"submit_job": NONE, "clone_job": NONE, "manage_job": OWN_ORG, "download_job": OWN_ORG,
                  "operate": OWN_ORG},
    "lead": {"submit_job": ANY, "clone_job": OWN_JOBS, "manage_job": OWN_JOBS, "download_job": OWN_JOBS,
             "operate": NONE},
    "member": {"submit_job": NONE, "clone_job": NONE, "manage_job": NONE, "download_job": NONE, "operate": NONE},
}  # fmt: skip


def expected(role: str, right: str | None, target: str) -> bool:
    """Whether role may call an RPC needing right on target ('in', 'out', 'server' or '-' for none)."""
    if right is None:  # login, and project-admin-only commands
        return True
    if right == "project_admin":
        return role == "project_admin"
    if right == "view":
        return True  # view: any, for every role
    scope = SCOPES[role][right]
    if scope == ANY:
        return True
    if scope == NONE:
        return False
    if target == "-":
        return True  # a right without a target (submit_job) needs only a scope other than none
    if target == "server":
        return False  # the server or every site: operate any only
    # every caller is in acme; lead@acme.org is the 'in' job's submitter
    return target == "in"


# ---------------------------------------------------------------- the federation


@dataclass
class World:
    fed: Federation
    stubs: dict[str, tuple[fedsec_pb2_grpc.AdminStub, list[tuple[str, str]], Session]]
    running: dict[str, str]  # 'in'/'out' -> a job that keeps running (no site ever joins it)
    finished: dict[str, str]  # 'in'/'out' -> an aborted job
    register: Callable[[str], None]
    site_stubs: dict[str, fedsec_pb2_grpc.FederationStub]
    archive: bytes  # a small job archive for submissions

    def restore_sites(self) -> None:
        """Both sites connected and not removed, as an allowed remove_client may have left them."""
        stub, md, _ = self.stubs["project_admin"]
        for site in SITE.values():
            try:
                stub.EnableClient(fedsec_pb2.SiteRef(site=site), timeout=10, metadata=md)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc  # it was not removed
            self.register(site)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("authz")
    fed = Federation(root, n_clients=2, heartbeat_timeout=3600.0, site_orgs=("acme", "beta"), extra_admins=ADMINS)
    sessions: list[Session] = []
    channels: list[grpc.Channel] = []
    try:
        fed.start("server1")
        server = load_kit(fed.kit("server1")).config
        assert isinstance(server, ServerConfig)
        site_stubs = {}
        for site in SITE.values():
            ch = channel(load_kit(fed.kit(site)), "localhost", int(server.fl_port), "server1")
            channels.append(ch)
            site_stubs[site] = fedsec_pb2_grpc.FederationStub(ch)

        def register(site: str) -> None:  # a site known to the server with its org, without a site process
            site_stubs[site].Register(fedsec_pb2.RegisterRequest(fedsec_version="test"), timeout=10)

        stubs = {}
        for role, name in ROLES.items():
            session = Session(fed.kit(name))
            sessions.append(session)
            session.login(wait_for_server=True)
            stubs[role] = (session._stub, [("fedsec-session", session._token)], session)
        jobs_dir = root / "jobs"
        jobs_dir.mkdir()
        running, finished = {}, {}
        for where, owner in JOB_OWNER.items():
            with Session(fed.kit(owner)) as lead:
                running[where] = lead.submit_job(linear_job(jobs_dir, start_timeout=3600.0))
                finished[where] = lead.submit_job(linear_job(jobs_dir, start_timeout=3600.0))
        admin = stubs["project_admin"][2]
        wait_until(lambda: all(admin.get_job_meta(j).status == "running" for j in running.values()), 60, "jobs run")
        for job in finished.values():
            admin.abort_job(job)
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("readme.txt", "no meta.yml: not a job")
        world = World(fed, stubs, running, finished, register, site_stubs, archive.getvalue())
        world.restore_sites()
        yield world
    finally:
        for session in sessions:
            session.close()
        for ch in channels:
            ch.close()
        fed.stop()


# ---------------------------------------------------------------- the calls


def _submit(w: World, role: str, target: str) -> Any:
    stub, md, session = w.stubs[role]
    key = certs.load_key(session.kit.key_path.read_bytes(), "admin key")
    signed = sign_archive(
        w.archive, key, session.kit.cert_path.read_bytes(), job_id=str(uuid.uuid4()), submit_time=int(time.time())
    )
    signature = fedsec_pb2.JobSignature(
        signature=signed.signature, signer_cert=signed.signer_cert, job_id=signed.job_id, submit_time=signed.submit_time
    )
    first = fedsec_pb2.SubmitPart(info=streams.describe_bytes(w.archive), signature=signature)
    parts = [first, *(fedsec_pb2.SubmitPart(data=c) for c in streams.bytes_chunks(w.archive))]
    return stub.SubmitJob(iter(parts), timeout=30, metadata=md)


def _clone(w: World, role: str, target: str) -> Any:
    stub, md, _ = w.stubs[role]
    signature = fedsec_pb2.JobSignature(signature=b"x", signer_cert=b"x", job_id=BAD_JOB_ID, submit_time=1)
    request = fedsec_pb2.CloneRequest(job_id=w.running[target], signature=signature)
    return stub.CloneJob(request, timeout=30, metadata=md)


def _job_call(rpc: str, jobs: str, **extra: Any) -> Callable[[World, str, str], Any]:
    def call(w: World, role: str, target: str) -> Any:
        stub, md, _ = w.stubs[role]
        job = getattr(w, jobs)[target]
        request = fedsec_pb2.TargetRequest(job_id=job, **extra) if extra else fedsec_pb2.JobRef(job_id=job)
        reply = getattr(stub, rpc)(request, timeout=30, metadata=md)
        return list(reply) if rpc == "DownloadJob" else reply

    return call


def _tail(w: World, role: str, target: str) -> Any:
    stub, md, _ = w.stubs[role]
    request = fedsec_pb2.LogTailRequest(job_id=w.finished[target])
    return stub.TailJobLog(request, timeout=30, metadata=md)


def _site_call(rpc: str) -> Callable[[World, str, str], Any]:
    def call(w: World, role: str, target: str) -> Any:
        stub, md, _ = w.stubs[role]
        site = SITE[target]
        if rpc == "SysInfo":
            request: Any = fedsec_pb2.TargetRequest(target=site)
        elif rpc == "Shutdown":
            request = fedsec_pb2.TargetRequest(target="client", sites=[site])  # no site process hears it
        else:
            request = fedsec_pb2.SiteRef(site=site)
        return getattr(stub, rpc)(request, timeout=30, metadata=md)

    return call


def _server_call(rpc: str) -> Callable[[World, str, str], Any]:
    def call(w: World, role: str, target: str) -> Any:
        stub, md, _ = w.stubs[role]
        return getattr(stub, rpc)(fedsec_pb2.TargetRequest(target="server"), timeout=30, metadata=md)

    return call


def _plain(rpc: str, request: Any) -> Callable[[World, str, str], Any]:
    def call(w: World, role: str, target: str) -> Any:
        stub, md, _ = w.stubs[role]
        return getattr(stub, rpc)(request, timeout=30, metadata=md)

    return call


def _login(w: World, role: str, target: str) -> Any:
    w.stubs[role][2].login()
    w.stubs[role][1][0] = ("fedsec-session", w.stubs[role][2]._token)


# rpc -> (right, targets, call)
RPCS: dict[str, tuple[str | None, tuple[str, ...], Callable[[World, str, str], Any]]] = {
    "GetChallenge+Login": (None, ("-",), _login),
    "SubmitJob": ("submit_job", ("-",), _submit),
    "GetJobArchiveInfo": ("clone_job", ("in", "out"), _job_call("GetJobArchiveInfo", "running")),
    "CloneJob": ("clone_job", ("in", "out"), _clone),
    "ListJobs": ("view", ("-",), _plain("ListJobs", fedsec_pb2.ListJobsRequest())),
    "GetJobMeta": ("view", ("in", "out"), _job_call("GetJobMeta", "running")),
    "AbortJob": ("manage_job", ("in", "out"), _job_call("AbortJob", "finished")),
    "DeleteJob": ("manage_job", ("in", "out"), _job_call("DeleteJob", "running")),
    "DownloadJob": ("download_job", ("in", "out"), _job_call("DownloadJob", "finished")),
    "GetJobLog": ("download_job", ("in", "out"), _job_call("GetJobLog", "finished", target="server")),
    "TailJobLog": ("download_job", ("in", "out"), _tail),
    "ListClients": ("view", ("-",), _plain("ListClients", fedsec_pb2.Empty())),
    "RemoveClient": ("operate", ("in", "out"), _site_call("RemoveClient")),
    "EnableClient": ("operate", ("in", "out"), _site_call("EnableClient")),
    "CheckStatus": ("view", ("-",), _plain("CheckStatus", fedsec_pb2.TargetRequest(target="server"))),
    "SysInfo": ("operate", ("in", "out", "server"), _site_call("SysInfo")),
    "Version": ("view", ("-",), _plain("Version", fedsec_pb2.Empty())),
    "Shutdown": ("operate", ("in", "out", "server"), _site_call("Shutdown")),
    "ShowAudit": ("project_admin", ("-",), _plain("ShowAudit", fedsec_pb2.TargetRequest())),
}
CASES = [
    (rpc, role, target)
    for rpc, (_, targets, _) in RPCS.items()
    for target in targets
    for role in ROLES
    # the project admin may shut the server down: that would end this module's federation
    if not (rpc == "Shutdown" and target == "server" and role == "project_admin")
]


def test_every_admin_rpc_is_in_the_table() -> None:
    served = {m.name for m in fedsec_pb2.DESCRIPTOR.services_by_name["Admin"].methods}
    covered = {part for name in RPCS for part in name.split("+")}
    assert served == covered


@pytest.mark.parametrize(("rpc", "role", "target"), CASES, ids=["-".join(c) for c in CASES])
def test_authorization_matrix(world: World, rpc: str, role: str, target: str) -> None:
    right, _, call = RPCS[rpc]
    if target == "server":
        call = _server_call(rpc)
    world.restore_sites()
    try:
        call(world, role, target)
        code = grpc.StatusCode.OK
        details = ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    assert code is not grpc.StatusCode.INTERNAL, details
    allowed = expected(role, right, target)
    if allowed:
        assert code is not grpc.StatusCode.PERMISSION_DENIED, f"{role} refused {rpc} on {target}: {details}"
    else:
        assert code is grpc.StatusCode.PERMISSION_DENIED, f"{role} was not refused {rpc} on {target}: {code} {details}"
    assert world.fed.procs["server1"].poll() is None


def test_allowed_submissions_and_clones_stopped_after_authorization(world: World) -> None:
    """The allowed SubmitJob and CloneJob cases above got past authorization and no further: no job was made."""
    stub, md, _ = world.stubs["project_admin"]
    jobs = stub.ListJobs(fedsec_pb2.ListJobsRequest(), timeout=30, metadata=md).jobs
    assert {j.job_id for j in jobs} == {*world.running.values(), *world.finished.values()}
    store = world.fed.kit("server1") / "store" / "jobs"
    assert not list(store.glob(".submit-*"))  # refused submissions left no staging folder
    assert list(store.glob("*/workspace/result"))  # downloads happened (their result folders are there)
    assert not list(store.glob("*/workspace/.download-*"))  # each download's archive file went with its stream


JOB_RPCS = [
    "GetJobArchiveInfo", "CloneJob", "GetJobMeta", "AbortJob", "DeleteJob", "DownloadJob", "GetJobLog", "TailJobLog"
]  # fmt: skip


@pytest.mark.parametrize("job_id", ["", "../../etc", "x" * 100, "1234567890abcdef" * 3])
@pytest.mark.parametrize("rpc", JOB_RPCS)
def test_a_malformed_job_id_is_invalid_argument(world: World, rpc: str, job_id: str) -> None:
    stub, md, _ = world.stubs["project_admin"]
    if rpc == "CloneJob":
        request: Any = fedsec_pb2.CloneRequest(job_id=job_id, signature=fedsec_pb2.JobSignature(job_id=BAD_JOB_ID))
    elif rpc == "GetJobLog":
        request = fedsec_pb2.TargetRequest(job_id=job_id)
    elif rpc == "TailJobLog":
        request = fedsec_pb2.LogTailRequest(job_id=job_id)
    else:
        request = fedsec_pb2.JobRef(job_id=job_id)
    with pytest.raises(grpc.RpcError) as err:
        reply = getattr(stub, rpc)(request, timeout=30, metadata=md)
        list(reply) if rpc == "DownloadJob" else reply
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"job id {job_id[:40]!r} is not a job id" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("sys_info", "fragment"),
    [
        ("not json", "system information: not JSON"),
        ("[" * 1000 + "]" * 1000, "nested deeper than"),
        ('{"n": ' + "9" * 3000 + "}", "more than 100 digits"),
        ("[1, 2]", "is not a JSON object"),
        ("{}" + " " * 5000, "larger than 4096 bytes"),
    ],
)
def test_a_sites_bad_system_information_is_refused(world: World, sys_info: str, fragment: str) -> None:
    request = fedsec_pb2.RegisterRequest(fedsec_version="test", sys_info_json=sys_info)
    with pytest.raises(grpc.RpcError) as err:
        world.site_stubs["site-1"].Register(request, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (err.value.details() or "")
    world.restore_sites()
    stub, md, _ = world.stubs["project_admin"]
    assert stub.SysInfo(fedsec_pb2.TargetRequest(target="site-1"), timeout=10, metadata=md).text == "{}"
