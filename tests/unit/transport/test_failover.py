"""Failover between server replicas: which endpoint is in use, and the standby answer read over the wire."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from fedsec.kit import ClientConfig, ServerEndpoint, load_kit
from fedsec.provision import load_project, provision
from fedsec.transport.failover import Endpoints, fails_over, is_standby
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc
from tests.conftest import BASE_PROJECT, project_doc, write_project
from tests.standby import StandbyReplica


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica_project(tmp_path: Path) -> Path:
    """A project whose server has two replicas on free ports of 127.0.0.1; its prod folder."""
    parts = [dict(p) for p in BASE_PROJECT["participants"]]
    parts[0]["replicas"] = [
        {"name": f"server1-{r}", "host": "127.0.0.1", "fl_port": _free_port(), "admin_port": _free_port()} for r in "ab"
    ]
    path = write_project(tmp_path / "p.yml", project_doc(participants=parts))
    return provision(load_project(path), tmp_path / "ws").prod_dir


def test_endpoints_move_on_in_order_and_wrap() -> None:
    ends = Endpoints([ServerEndpoint("s", "a", 1), ServerEndpoint("s", "b", 2), ServerEndpoint("s", "c", 3)])
    assert ends.current.host == "a"
    assert ends.advance(0).host == "b"
    assert ends.advance(0).host == "b"  # another thread saw a fail, but we moved past it already
    assert ends.advance(1).host == "c"
    assert ends.advance(2).host == "a"


def test_no_endpoint_is_an_error() -> None:
    with pytest.raises(Exception, match="no server endpoint"):
        Endpoints([])


def test_a_standby_answer_and_a_dead_endpoint_both_fail_over(tmp_path: Path) -> None:
    prod = replica_project(tmp_path)
    site = load_kit(prod / "site-1")
    assert isinstance(site.config, ClientConfig)
    standby_end, dead_end = site.config.endpoints
    request = fedsec_pb2.RegisterRequest(fedsec_version="test")
    with StandbyReplica(prod / "server1-a") as standby:
        with channel(site, standby_end.host, standby_end.port, standby_end.name) as ch:
            with pytest.raises(grpc.RpcError) as answered:
                fedsec_pb2_grpc.FederationStub(ch).Register(request, timeout=10)
        assert standby.calls == ["/fedsec.v1.Federation/Register"]  # TLS passed: it is the server, a standby
    assert isinstance(answered.value, grpc.Call)
    assert answered.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "server replica server1-a is a standby" in (answered.value.details() or "")
    assert is_standby(answered.value) and fails_over(answered.value)

    with channel(site, dead_end.host, dead_end.port, dead_end.name) as ch:
        with pytest.raises(grpc.RpcError) as refused:
            fedsec_pb2_grpc.FederationStub(ch).Register(request, timeout=10)
    assert not is_standby(refused.value)
    assert fails_over(refused.value)
