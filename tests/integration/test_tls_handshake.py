"""Real TLS 1.3 handshakes with mutual authentication between provisioned kits on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from fedsec.pki import certs
from tests.conftest import project_doc, write_project


def _server_ctx(kit: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(kit / "startup/server1.crt", kit / "startup/server1.key")
    ctx.load_verify_locations(kit / "startup/rootCA.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_ctx(kit: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(kit / f"startup/{name}.crt", kit / f"startup/{name}.key")
    ctx.load_verify_locations(kit / "startup/rootCA.pem")
    return ctx


def handshake(server_kit: Path, client_kit: Path, client_name: str) -> tuple[str | None, dict[str, object] | None]:
    """Handshake once; return (server-side error or None, the client cert the server saw)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with _server_ctx(server_kit).wrap_socket(conn, server_side=True) as tls:
                result["peer"] = tls.getpeercert()
                result["version"] = tls.version()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result["error"] = str(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            _client_ctx(client_kit, client_name).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() == "TLSv1.3"
            tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        result.setdefault("client_error", str(exc))
    thread.join(10)
    listener.close()
    error = result.get("error") or result.get("client_error")
    return (str(error) if error else None), result.get("peer")  # type: ignore[return-value]


def test_mutual_tls13_between_server_and_site(prod: Path) -> None:
    error, peer = handshake(prod / "server1", prod / "site-1", "site-1")
    assert error is None
    assert peer is not None
    subject = dict(x[0] for x in peer["subject"])  # type: ignore[attr-defined]
    assert subject["commonName"] == "site-1"


def test_client_cert_from_another_project_is_refused(prod: Path, tmp_path: Path) -> None:
    from fedsec.provision import load_project, provision

    other = provision(load_project(write_project(tmp_path / "o.yml", project_doc(name="otherproj"))), tmp_path / "ows")
    # the intruder trusts our server's root (so only the server side decides) but presents a foreign cert
    intruder = other.prod_dir / "site-1"
    (intruder / "startup/rootCA.pem").write_bytes((prod / "server1/startup/rootCA.pem").read_bytes())
    error, peer = handshake(prod / "server1", intruder, "site-1")
    assert error is not None and peer is None
    assert "certificate" in error.lower() or "alert" in error.lower()


def test_server_cert_is_verified_by_the_site(prod: Path, tmp_path: Path) -> None:
    _, foreign_root = certs.make_root("x", 10)
    kit = prod / "site-1"
    (kit / "startup/rootCA.pem").write_bytes(certs.cert_pem(foreign_root))
    error, peer = handshake(prod / "server1", kit, "site-1")
    assert error is not None and peer is None


def test_kits_of_two_prods_work_together(tmp_path: Path) -> None:
    from fedsec.provision import load_project, provision

    yml = write_project(tmp_path / "p.yml", project_doc())
    first = provision(load_project(yml), tmp_path / "ws")
    second = provision(load_project(yml), tmp_path / "ws")
    assert first.prod_dir.name == "prod_00" and second.prod_dir.name == "prod_01"
    assert handshake(first.prod_dir / "server1", second.prod_dir / "site-2", "site-2")[0] is None
    assert handshake(second.prod_dir / "server1", first.prod_dir / "site-1", "site-1")[0] is None
