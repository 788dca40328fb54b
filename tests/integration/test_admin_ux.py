"""What an admin sees through Session and `fedsec admin`: an unreachable server, sites waited for, the shell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedsec.api import Session
from fedsec.errors import UnreachableError
from tests.integration.harness import Federation
from tests.integration.test_admin_shell import REPO, admin_env


def _server_address(federation: Federation) -> str:
    with Session(federation.admin_kit) as session:
        return session.server_address


def test_server_not_running(federation: Federation) -> None:
    """Provisioned, never started: the API and the shell name the server's address, not gRPC's text."""
    address = _server_address(federation)
    expected = f"cannot reach the server at {address} (is it running? see its log.txt)"
    with Session(federation.admin_kit, timeout=10) as session, pytest.raises(UnreachableError) as err:
        session.list_jobs()
    assert str(err.value) == expected

    done = subprocess.run(
        [sys.executable, "-m", "fedsec", "admin", "--kit", str(federation.admin_kit), "-c", "list_jobs"],
        check=False,
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=admin_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"fedsec: error: {expected}"
    assert "failed to connect" not in done.stderr and "Traceback" not in done.stderr
