"""A training script whose site's process is gone stops, instead of retrying for RETRY_SECONDS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsec.client import api
from fedsec.errors import JobError
from fedsec.jobs.env import ENV_JOB_ID, ENV_JOB_TOKEN, ENV_SITE, ENV_SOCKET
from fedsec.transport.local import nobody_listens


@pytest.fixture
def dead_socket(tmp_path: Path) -> Path:
    """A socket file its process no longer serves (what a site killed with -9 leaves behind)."""
    path = tmp_path / "job.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(path))
    bound.close()
    return path


@pytest.fixture
def link_to(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(api, "_link", None)
    for key, value in ((ENV_JOB_ID, "job-1"), (ENV_SITE, "site-1"), (ENV_JOB_TOKEN, "t")):
        monkeypatch.setenv(key, value)
    yield
    if api._link is not None:
        api._link.channel.close()


def test_a_socket_nobody_serves_or_a_missing_one_is_gone_and_a_served_one_is_not(
    tmp_path: Path, dead_socket: Path
) -> None:
    assert nobody_listens(dead_socket)
    assert nobody_listens(tmp_path / "missing.sock")
    live = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(live))
    server.listen(1)
    try:
        assert not nobody_listens(live)
    finally:
        server.close()


@pytest.mark.usefixtures("link_to")
def test_receive_stops_with_a_clear_error_when_the_site_is_gone(
    dead_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SOCKET, str(dead_socket))
    monkeypatch.setattr(
        api, "RETRY_SECONDS", 60.0
    )  # were the site taken for a passing outage, this would end in FedsecError
    api.init()
    with pytest.raises(JobError, match="the site that started this job is gone"):
        api.receive()
