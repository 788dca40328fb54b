"""The server knows peers only by verified certificates: refusals on both ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from fedsec.api import Session
from fedsec.errors import AuthError, KitError
from fedsec.kit import load_kit
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc
from tests.integration.harness import ADMIN, Federation


def _fl_stub(fed: Federation, kit_dir: Path) -> tuple[grpc.Channel, fedsec_pb2_grpc.FederationStub]:
    kit = load_kit(kit_dir)
    port = load_kit(fed.kit("server1")).config.fl_port  # type: ignore[union-attr]
    ch = channel(kit, "localhost", port, "server1")
    return ch, fedsec_pb2_grpc.FederationStub(ch)


def _register(stub: fedsec_pb2_grpc.FederationStub) -> fedsec_pb2.RegisterReply:
    reply: fedsec_pb2.RegisterReply = stub.Register(fedsec_pb2.RegisterRequest(fedsec_version="test"), timeout=10)
    return reply


@pytest.mark.federation(n_clients=1)
def test_refusals(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()

    # a site certificate registers as itself
    ch, stub = _fl_stub(federation, federation.kit("site-1"))
    assert _register(stub).project == "itest"
    ch.close()

    # an admin certificate is refused on the client port
    ch, stub = _fl_stub(federation, federation.admin_kit)
    with pytest.raises(grpc.RpcError) as err:
        _register(stub)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "admin certificate" in (err.value.details() or "")
    ch.close()

    # a site certificate is refused on the admin port
    site_as_admin = tmp_path / "site-as-admin"
    site_kit = load_kit(federation.kit("site-1"))
    admin_port = load_kit(federation.kit("server1")).config.admin_port  # type: ignore[union-attr]
    ch = channel(site_kit, "localhost", admin_port, "server1")
    with pytest.raises(grpc.RpcError) as err:
        fedsec_pb2_grpc.AdminStub(ch).ListJobs(fedsec_pb2.ListJobsRequest(), timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    ch.close()
    assert not site_as_admin.exists()

    # a certificate from another project's CA fails the TLS handshake
    (tmp_path / "other").mkdir()
    other = Federation(tmp_path / "other", n_clients=1, name="otherproj")
    foreign = other.kit("site-1")
    (foreign / "startup/rootCA.pem").write_bytes((federation.kit("site-1") / "startup/rootCA.pem").read_bytes())
    foreign_kit = load_kit_unchecked(foreign)
    ch = channel(foreign_kit, "localhost", load_kit(federation.kit("server1")).config.fl_port, "server1")  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError) as err:
        _register(fedsec_pb2_grpc.FederationStub(ch))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    ch.close()

    # a connection with no client certificate fails the TLS handshake
    creds = grpc.ssl_channel_credentials(
        root_certificates=(federation.kit("site-1") / "startup/rootCA.pem").read_bytes()
    )
    port = load_kit(federation.kit("server1")).config.fl_port  # type: ignore[union-attr]
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        with pytest.raises(grpc.RpcError) as err:
            _register(fedsec_pb2_grpc.FederationStub(ch))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE

    # nothing of the refused peers was registered
    server_log = federation.log("server1")
    assert f"site={ADMIN} registered" not in server_log
    assert server_log.count("site=site-1 registered") == 2  # the client process and the check above


def load_kit_unchecked(root: Path):  # type: ignore[no-untyped-def]
    """A kit whose signature no longer matches (its root CA was swapped): build the Kit by hand."""
    from fedsec.kit import Kit
    from fedsec.pki import certs

    with pytest.raises(KitError):
        load_kit(root)
    cert = certs.load_cert((root / "startup/site-1.crt").read_bytes(), "x")
    from fedsec.kit import ClientConfig, ServerEndpoint

    config = ClientConfig("fedsec-kit/1", "otherproj", "site-1", "acme", ServerEndpoint("server1", "localhost", 1))
    identity = certs.identity_of(cert)
    ca_pem = (root / "startup/rootCA.pem").read_bytes()
    return Kit(root=root, kind=certs.Kind.CLIENT, config=config, identity=identity, signed_files=(), ca_pem=ca_pem)


def test_session_refuses_a_site_kit(federation: Federation) -> None:
    with pytest.raises(KitError, match="not an admin kit"):
        Session(federation.kit("site-1"))


def test_server_refuses_a_tampered_kit(federation: Federation) -> None:
    (federation.kit("server1") / "startup/fed_server.json").write_text("{}")
    proc = federation.start("server1")
    assert proc.wait(30) == 2
    assert "startup/fed_server.json does not match its signature" in federation.log("server1")


def test_second_server_from_the_same_kit_is_refused(federation: Federation) -> None:
    federation.start_all()
    with federation.log_path("server1-again").open("wb") as log:
        again = subprocess.run(
            [sys.executable, "-m", "fedsec", "server", "--kit", str(federation.kit("server1"))],
            stdout=log, stderr=subprocess.STDOUT, timeout=30, check=False,
        )  # fmt: skip
    assert again.returncode == 2
    pid = federation.procs["server1"].pid
    assert f"server server1 is already running from this kit (pid {pid})" in federation.log("server1-again")


def test_session_error_is_a_fedsec_error(federation: Federation) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s, pytest.raises(Exception, match="no such job") as err:
        s.get_job_meta("0000dead-0000-4000-8000-000000000000")
    assert not isinstance(err.value, AuthError)
