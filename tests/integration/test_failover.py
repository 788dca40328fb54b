"""A server of two replicas: sites and admins find the one that answers from their kits alone.

The lease that picks the active replica, and a job that carries on across the
move, are not built yet: here one replica runs at a time (the other is down or
a standby's stand-in, tests.standby), each on its own kit and store.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedsec.api import Session
from fedsec.kit import AdminConfig, ClientConfig, load_kit
from fedsec.transport.failover import address
from tests.integration.harness import Federation
from tests.standby import StandbyReplica

SITES = ["site-1", "site-2"]


def _addresses(federation: Federation, kit: str) -> list[str]:
    config = load_kit(federation.kit(kit)).config
    assert isinstance(config, ClientConfig | AdminConfig)
    return [address(e) for e in config.endpoints]


def _alive(session: Session) -> list[str]:
    return sorted(c["name"] for c in session.list_clients() if c.get("alive"))


@pytest.mark.federation(n_clients=2, replicas=2)
def test_sites_and_an_admin_move_to_the_second_replica_when_the_first_dies(federation: Federation) -> None:
    first, second = federation.servers
    site_a, site_b = _addresses(federation, "site-1")
    admin_a, admin_b = _addresses(federation, federation.admin_kit.name)
    federation.start(first)
    for site in SITES:
        federation.start(site)
    federation.wait_registered(SITES, server=first)
    for site in SITES:  # the site logs it just after the server does
        federation.wait_log(site, f"registered with server=server1 at {site_a} ", 30)

    with Session(federation.admin_kit, timeout=10) as session:
        moves: list[tuple[str, str]] = []
        session.on_failover = lambda left, now: moves.append((left, now))
        assert _alive(session) == SITES
        assert session.server_address == admin_a

        federation.kill(first)  # SIGKILL, by pid
        federation.start(second)
        federation.wait_registered(SITES, server=second)  # on their own: nobody told them the address
        for site in SITES:
            federation.wait_log(site, f"registered with server=server1 at {site_b} ", 30)

        assert _alive(session) == SITES  # the same session: it logs in at the second replica by itself
        assert session.server_address == admin_b
        assert moves == [(admin_a, admin_b)]

    with Session(federation.admin_kit, timeout=10) as fresh:  # a new session starts at the first, moves on
        assert _alive(fresh) == SITES
        assert fresh.server_address == admin_b

    shell = subprocess.run(
        [sys.executable, "-m", "fedsec", "admin", "--kit", str(federation.admin_kit), "--json", "-c", "list_clients"],
        capture_output=True, text=True, timeout=120, check=False, start_new_session=True,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    listed = json.loads(shell.stdout)["result"]
    assert sorted(c["name"] for c in listed if c["alive"]) == SITES
    assert f"the server at {admin_a} does not answer; now using {admin_b}" in shell.stderr


@pytest.mark.federation(n_clients=2, replicas=2)
def test_sites_and_an_admin_pass_a_standby_by(federation: Federation) -> None:
    standby_kit, active = federation.servers
    with StandbyReplica(federation.kit(standby_kit)) as standby:
        federation.start(active)
        for site in SITES:
            federation.start(site)
        federation.wait_registered(SITES, server=active)
        with Session(federation.admin_kit, timeout=10) as session:
            assert _alive(session) == SITES
            assert session.server_address == _addresses(federation, federation.admin_kit.name)[1]
        calls = standby.calls
    assert calls.count("/fedsec.v1.Federation/Register") >= len(SITES)  # every site asked the standby first
    assert "/fedsec.v1.Admin/GetChallenge" in calls
    for site in SITES:
        assert f"cannot register at {_addresses(federation, site)[0]} (a standby replica)" in federation.log(site)
