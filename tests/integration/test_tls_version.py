"""TLS 1.3 only: a real TLS 1.2-only gRPC client (ssl + h2, a handshake gRPC cannot refuse) gets no call served."""

from __future__ import annotations

import socket
import ssl

import h2.config
import h2.connection
import h2.events
import pytest

from fedsec.kit import load_kit
from fedsec.wire import fedsec_pb2
from tests.integration.harness import ADMIN, Federation


def _grpc_call(
    fed: Federation, kit_name: str, port: int, path: str, message: bytes, tls: ssl.TLSVersion
) -> dict[str, str]:
    """One gRPC call over HTTP/2 on a TLS connection capped at tls; the response headers and trailers."""
    startup = fed.kit(kit_name) / "startup"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = tls
    ctx.load_verify_locations(startup / "rootCA.pem")
    ctx.load_cert_chain(startup / f"{kit_name}.crt", startup / f"{kit_name}.key")
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            assert sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[tls]
            conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(
                1,
                [
                    (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost"),
                    ("content-type", "application/grpc"), ("te", "trailers"),
                ],
            )  # fmt: skip
            conn.send_data(1, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=True)
            sock.sendall(conn.data_to_send())
            seen: dict[str, str] = {}
            ended = False
            while not ended:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        seen.update({k.decode(): v.decode() for k, v in event.headers})
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                sock.sendall(conn.data_to_send())
            return seen


@pytest.mark.federation(n_clients=1)
def test_a_tls12_client_gets_no_call_served(federation: Federation) -> None:
    federation.start("server1")
    config = load_kit(federation.kit("server1")).config
    register = fedsec_pb2.RegisterRequest(fedsec_version="tls-test").SerializeToString()
    path = "/fedsec.v1.Federation/Register"
    fl_port = int(config.fl_port)  # type: ignore[union-attr]
    # the same raw client over TLS 1.3 is served: the refusal below is the version's, not the client's
    ok = _grpc_call(federation, "site-1", fl_port, path, register, ssl.TLSVersion.TLSv1_3)
    assert ok.get("grpc-status") == "0", ok
    refused = _grpc_call(federation, "site-1", fl_port, path, register, ssl.TLSVersion.TLSv1_2)
    assert refused.get("grpc-status") == "7", refused  # PERMISSION_DENIED
    assert "TLS 1.3 only" in refused.get("grpc-message", "").replace("%20", " "), refused
    admin_port = int(config.admin_port)  # type: ignore[union-attr]
    challenge = _grpc_call(federation, ADMIN, admin_port, "/fedsec.v1.Admin/GetChallenge", b"", ssl.TLSVersion.TLSv1_2)
    assert challenge.get("grpc-status") == "7", challenge
    assert "site=site-1 registered version=tls-test" in federation.log("server1")
    assert federation.log("server1").count("registered version=tls-test") == 1  # only the TLS 1.3 call
