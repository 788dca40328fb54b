"""ServerConnection: every call of a site takes the stub of the endpoint in use at the moment it is made."""

from __future__ import annotations

from pathlib import Path

from fedsec.kit import ClientConfig, load_kit
from fedsec.site.connection import ServerConnection
from fedsec.transport.failover import Endpoints
from tests.unit.transport.test_failover import replica_project


def test_a_move_switches_every_later_call_and_a_stale_one_moves_nothing(tmp_path: Path) -> None:
    kit = load_kit(replica_project(tmp_path) / "site-1")
    assert isinstance(kit.config, ClientConfig)
    first, second = kit.config.endpoints
    conn = ServerConnection(kit, Endpoints(kit.config.endpoints))
    upstream = conn.stub  # what the agent hands the job relays, the archive download and the log shipper
    try:
        before, live_before = upstream(), conn.live()
        assert conn.endpoint == first and upstream() is before  # one stub per endpoint, made once
        assert live_before is not before  # heartbeats on a connection of their own

        assert conn.fail_over(0) == second
        assert conn.address == f"{second.host}:{second.port}"
        after = upstream()
        assert after is not before and conn.live() is not live_before

        assert conn.fail_over(0) == second  # a caller that saw the first fail late moves nothing
        assert upstream() is after
        assert conn.fail_over(1) == first  # wraps around, back to the first endpoint's stub
        assert upstream() is before
    finally:
        conn.close()
